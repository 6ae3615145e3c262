"""Load-test prompts: the built-in ~100-token set, prompt files, a dataset through the prompt templates."""

from __future__ import annotations

import pytest

from tunebench.errors import UserError
from tunebench.loadtest.prompt_sets import builtin_prompts, dataset_prompts, load_counter, read_prompt_file


def test_builtin_prompts_are_about_100_tokens(tiny_tokenizer_dir):
    prompts = builtin_prompts()
    assert prompts.source == "builtin" and len(prompts.texts) >= 30 and len(set(prompts.texts)) == len(prompts.texts)
    words = [len(text.split()) for text in prompts.texts]
    # ~1.2 SmolLM2 tokens per English word: 68-91 words are 85-110 tokens (mean 96 measured).
    assert min(words) >= 60 and max(words) <= 100
    counter = load_counter(str(tiny_tokenizer_dir))
    assert all(counter.count(text) > 50 for text in prompts.texts)


def test_prompt_file_plain_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first prompt\n\n  second prompt  \n")
    assert read_prompt_file(path).texts == ["first prompt", "second prompt"]


def test_prompt_file_jsonl_and_its_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n"b"\n{"text": "c"}\n')
    assert read_prompt_file(path).texts == ["a", "b", "c"]
    path.write_text('{"prompt": "a"}\n{"label": "x"}\n')
    with pytest.raises(UserError, match=r"p.jsonl:2: no prompt"):
        read_prompt_file(path)
    path.write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(UserError, match=r"p.jsonl:2: not valid JSON"):
        read_prompt_file(path)


def test_missing_or_empty_prompt_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_prompt_file(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text(" \n")
    with pytest.raises(UserError, match="is empty"):
        read_prompt_file(tmp_path / "empty.txt")


def test_dataset_prompts_go_through_the_templates(tiny_llama_dir):
    zero = dataset_prompts("builtin:classification", "classification", "zero_shot", str(tiny_llama_dir), limit=5)
    few = dataset_prompts("builtin:classification", "classification", "few_shot", str(tiny_llama_dir), limit=5)
    assert len(zero.texts) == len(few.texts) == 5 and "zero_shot" in zero.source
    assert all(len(f) > len(z) for z, f in zip(zero.texts, few.texts, strict=True))  # few-shot adds examples
