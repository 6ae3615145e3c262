"""The context guard: truncate (the input and every few-shot example's input) or skip, and count both."""

from __future__ import annotations

from tunebench.config.schema import PromptConfig
from tunebench.data import Example
from tunebench.prompts import PromptBuilder

LABELS = ["autos", "cooking", "space"]
LONG = "The engine makes a rattling noise when the car idles at a red light. " * 12
SHORT = "Rockets reach orbit."
TRAIN = [Example(f"t{i}", f"{label} story: {LONG}", label) for i, label in enumerate(LABELS)]


def guard(tokenizer, context: int, policy: str = "truncate", answer: int = 8) -> PromptBuilder:
    cfg = PromptConfig(context_policy=policy, answer_tokens=answer)
    return PromptBuilder(cfg, "classification", tokenizer, labels=LABELS, train_examples=TRAIN,
                         use_chat_template=False, context_length=context)


def tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def test_truncate_cuts_the_input_to_fit_and_counts(tiny_tokenizer):
    full = guard(tiny_tokenizer, 100_000).zero_shot(Example("e", LONG, "autos"))
    b = guard(tiny_tokenizer, full.n_tokens - 40)
    prompt = b.zero_shot(Example("e", LONG, "autos"))
    assert prompt.truncated and not prompt.skipped
    assert prompt.n_tokens <= b.context_length - 8 and prompt.n_tokens == tokens(tiny_tokenizer, prompt.text)
    assert prompt.n_tokens >= b.context_length - 8 - 3  # the largest cut that fits, not an arbitrary one
    assert prompt.text.endswith("```\n\nClass:") and "```The engine makes" in prompt.text
    short = b.zero_shot(Example("s", SHORT, "space"))
    assert not short.truncated and SHORT in short.text
    assert b.guard_counts() == {"prompts": 2, "truncated": 1, "skipped": 0}


def test_skip_policy_skips_and_counts(tiny_tokenizer):
    full = guard(tiny_tokenizer, 100_000).zero_shot(Example("e", LONG, "autos"))
    b = guard(tiny_tokenizer, full.n_tokens, policy="skip")  # 8 answer tokens short of fitting
    prompt = b.zero_shot(Example("e", LONG, "autos"))
    assert prompt.skipped and prompt.text == "" and prompt.n_tokens == full.n_tokens and not prompt.truncated
    assert not b.zero_shot(Example("s", SHORT, "space")).skipped
    assert b.guard_counts("zero_shot") == {"prompts": 2, "truncated": 0, "skipped": 1}


def test_few_shot_truncates_every_example_input(tiny_tokenizer):
    ex = Example("e", SHORT, "space")
    full = guard(tiny_tokenizer, 100_000).few_shot(ex)
    b = guard(tiny_tokenizer, full.n_tokens // 2)
    prompt = b.few_shot(ex)
    assert prompt.truncated and prompt.n_tokens <= b.context_length - 8
    for label in LABELS:  # every example is kept, each one shortened
        assert f"```{label} story: The engine" in prompt.text and f"Class: {label}" in prompt.text
    assert prompt.text.count("rattling noise") < full.text.count("rattling noise")
    assert prompt.text.endswith(f"```{SHORT}```\nClass:")  # the short evaluated input is left whole
    assert b.guard_counts("few_shot")["truncated"] == 1


def test_a_prompt_that_cannot_fit_at_all_is_skipped_even_under_truncate(tiny_tokenizer):
    b = guard(tiny_tokenizer, 20)
    prompt = b.zero_shot(Example("e", LONG, "autos"))
    assert prompt.skipped and b.guard_counts() == {"prompts": 1, "truncated": 0, "skipped": 1}


def test_training_pairs_leave_room_for_the_completion(tiny_tokenizer):
    long_ex, short_ex = Example("l", LONG, "cooking"), Example("s", SHORT, "space")
    context = tokens(tiny_tokenizer, f"###Sentence:{LONG}###Class:cooking") - 20
    truncating = guard(tiny_tokenizer, context)
    prompt, completion = truncating.finetune_pair(long_ex)
    assert completion == "cooking" and prompt.endswith("###Class:") and len(prompt) < len(LONG)
    assert tokens(tiny_tokenizer, prompt) + tokens(tiny_tokenizer, completion) + 1 <= context + 1
    skipping = guard(tiny_tokenizer, context, policy="skip")
    assert skipping.training_pairs([long_ex, short_ex]) == [(f"###Sentence:{SHORT}###Class:", "space")]
    assert skipping.guard_counts("finetune_pair") == {"prompts": 2, "truncated": 0, "skipped": 1}
