"""Batched generation: same greedy text batched and unbatched, stop strings, finish reasons, input order."""

from __future__ import annotations

import pytest

from tunebench.evaluate.generation import Generation, cut_at_stop, finish, generate, length_sorted_batches

PROMPTS = [
    "The engine makes",
    "Our pitcher threw a no-hitter in the ninth inning last night and",
    "Plant",
    "###Sentence: hello world ###Class:",
    "Solder the resistor to the board and check the voltage with a meter, then",
    "Anna: are we still on for lunch tomorrow?\nBen:",
]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir", "tiny_t5_dir"])
def test_greedy_batched_equals_unbatched(fixture, request, load_tiny):
    model, tok = load_tiny(request.getfixturevalue(fixture), seq2seq=fixture == "tiny_t5_dir")
    batched = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=4)
    one_by_one = [generate(model, tok, [p], max_new_tokens=10, batch_size=1)[0] for p in PROMPTS]
    assert batched == one_by_one
    assert len({g.text for g in batched}) > 1  # different prompts, different continuations: order is kept
    assert [g.prompt_tokens for g in batched] == [len(tok(p)["input_ids"]) for p in PROMPTS]


def test_stop_strings_cut_the_text_and_count_as_stop(tiny_llama_dir, load_tiny):
    model, tok = load_tiny(tiny_llama_dir)
    free = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=3)
    stop = free[0].text[2:4]  # a string the first continuation contains
    stopped = generate(model, tok, PROMPTS, max_new_tokens=12, stop=[stop], batch_size=3)
    assert stopped[0].text == free[0].text[:free[0].text.index(stop)]
    assert stopped[0].finish_reason == "stop" and stopped[0].n_tokens < 12
    for g, f in zip(stopped, free, strict=True):
        assert stop not in g.text
        assert f.text.startswith(g.text)
        assert g.finish_reason == ("stop" if stop in f.text else f.finish_reason)


def test_finish_reasons_from_ids(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    hello = tiny_tokenizer("hello world", add_special_tokens=False)["input_ids"]
    ended = finish(tiny_tokenizer, [*hello, eos, eos], ends={eos}, pad=eos, stop=(), max_new_tokens=8,
                   prompt_tokens=3)
    assert ended == Generation("hello world", len(hello) + 1, "stop", 3)
    full = finish(tiny_tokenizer, hello, ends={eos}, pad=eos, stop=(), max_new_tokens=len(hello), prompt_tokens=3)
    assert full.finish_reason == "length" and full.n_tokens == len(hello)
    assert ended.ids == (*hello, eos) and full.ids == tuple(hello)  # up to and including the ending token
    assert cut_at_stop("a###b###", ["###"]) == ("a", True)
    assert cut_at_stop("abc", ["###", ""]) == ("abc", False)


def test_batches_are_length_sorted_and_cover_everything():
    batches = length_sorted_batches([5, 1, 9, 3, 7], 2)
    assert batches == [[2, 4], [0, 3], [1]]
    assert generate(None, None, [], max_new_tokens=3) == []


FEW_SHOT = "Summarize the dialogue in one line.\n\n" + "".join(f"Dialogue: {d}\nSummary: {s}\n\n" for d, s in (
    ("Tom: I missed the bus. Eva: I'll pick you up in ten minutes.", "Eva will pick Tom up because he missed the bus."),
    ("Mia: Is the shop open on Sunday? Sam: Yes, from 10 to 4.", "The shop opens on Sunday from 10 to 4."),
    ("Raj: Can you send me the report? Li: Sent it just now.", "Li sent Raj the report."),
))


def count_fed_tokens(model) -> list[int]:
    """A running total of the input tokens every forward pass of `model` was fed."""
    fed = [0]

    def hook(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        fed[0] += ids.numel() if ids is not None else 0

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return fed


def with_and_without_prefix_reuse(model, tok, prompts, monkeypatch, counted=None) -> tuple[list, list, int, int]:
    """(generations reusing the shared beginning, generations recomputing it, tokens fed for each, counted at
    `counted`'s forward: the model itself unless given)."""
    from tunebench.evaluate import generation

    fed = count_fed_tokens(counted or model)
    reused = generate(model, tok, prompts, max_new_tokens=8, stop=["\n\n"], batch_size=4)
    fed_reused = fed[0]
    with monkeypatch.context() as patch:
        patch.setattr(generation, "PREFIX_MIN_TOKENS", 10**9)  # off
        recomputed = generate(model, tok, prompts, max_new_tokens=8, stop=["\n\n"], batch_size=4)
    return reused, recomputed, fed_reused, fed[0] - fed_reused


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir"])
def test_a_shared_prompt_beginning_is_run_once_and_changes_no_token(fixture, request, load_tiny, monkeypatch):
    from tunebench.evaluate import generation

    model, tok = load_tiny(request.getfixturevalue(fixture))
    prompts = [FEW_SHOT + f"Dialogue: {p}\nSummary:" for p in PROMPTS]
    shared = generation.common_prefix_length([generation.encode(tok, p) for p in prompts])
    assert shared >= generation.PREFIX_MIN_TOKENS
    reused, recomputed, fed_reused, fed_recomputed = with_and_without_prefix_reuse(model, tok, prompts, monkeypatch)
    assert reused == recomputed
    # 6 prompts in 2 batches: the shared beginning is fed once instead of once per prompt.
    assert fed_recomputed - fed_reused == (len(prompts) - 1) * shared


def test_prefix_reuse_on_the_embedded_model(needs_embedded_model, monkeypatch):
    """A real few-shot prompt set: different, sensible continuations, token for token the same either way."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunebench.models.embedded import embedded_model_dir

    directory = embedded_model_dir()
    model, tok = AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)
    prompts = [FEW_SHOT + f"Dialogue: {p}\nSummary:" for p in PROMPTS]
    reused, recomputed, fed_reused, fed_recomputed = with_and_without_prefix_reuse(model, tok, prompts, monkeypatch)
    assert reused == recomputed
    assert len({g.text for g in reused}) == len(prompts)
    assert fed_recomputed > 2 * fed_reused


def test_common_prefix_leaves_each_prompt_a_token():
    from tunebench.evaluate.generation import common_prefix_length

    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 9]]) == 2
    assert common_prefix_length([[5], [1, 2]]) == 0


def test_prefix_reuse_through_a_peft_model(tiny_llama_dir, load_tiny, monkeypatch):
    """An evaluated LoRA adapter (a PeftModel) takes the same path: its cache argument is the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = load_tiny(tiny_llama_dir)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    prompts = [FEW_SHOT + f"Dialogue: {p}\nSummary:" for p in PROMPTS]
    reused, recomputed, fed_reused, fed_recomputed = with_and_without_prefix_reuse(
        peft_model.eval(), tok, prompts, monkeypatch, counted=model.model)  # the decoder both paths run
    assert reused == recomputed and fed_recomputed > fed_reused
