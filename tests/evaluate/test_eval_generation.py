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
    assert cut_at_stop("a###b###", ["###"]) == ("a", True)
    assert cut_at_stop("abc", ["###", ""]) == ("abc", False)


def test_batches_are_length_sorted_and_cover_everything():
    batches = length_sorted_batches([5, 1, 9, 3, 7], 2)
    assert batches == [[2, 4], [0, 3], [1]]
    assert generate(None, None, [], max_new_tokens=3) == []
