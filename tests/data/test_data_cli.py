"""`tunebench data show` and `tunebench demo` through the real entry point, and every bad input (exit 2)."""

from __future__ import annotations

import json


def assert_user_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "error:" in result.stderr and "fix:" in result.stderr and "Traceback" not in result.stderr
    flat = " ".join(result.stderr.split())
    for needle in needles:
        assert needle in flat, (needle, result.stderr)


def test_data_show_builtin(cli, tiny_llama_dir):
    result = cli("data", "show", "builtin:classification", "--tokenizer", str(tiny_llama_dir), "--fraction", "0.5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for needle in ("split", "train", "160", "test", "96", "label distribution", "gardening", "dropped rows: none",
                   "train 72 (fraction 0.5), validation 16 (carved from train), test 96", "zero_shot prompt for",
                   "Class:", "cls-0001"):
        assert needle in out, needle


def test_data_show_counts_dropped_rows_and_truncation(cli, tmp_path, tiny_llama_dir, tiny_tokenizer):
    rows = [{"chat": "Ann: hi\nBob: hello there, how are you doing today my friend?", "gist": "Ann greets Bob."},
            {"chat": "", "gist": "nothing"}, {"chat": "Cy: ok", "gist": "They part."}]
    test = {"chat": "Eve: lunch?\nFay: sure", "gist": "Lunch."}
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps(test) + "\n")
    lengths = [len(tiny_tokenizer(r["chat"], add_special_tokens=False)["input_ids"]) for r in (*rows, test)]
    cap = sorted(lengths)[-2]  # only the longest dialogue is over the cap
    result = cli("data", "show", str(tmp_path), "--column", "dialogue=chat", "--column", "summary=gist",
                 "--tokenizer", str(tiny_llama_dir), "--max-input-tokens", str(cap), "--method", "few_shot")
    assert result.returncode == 0, result.stderr
    assert "summarization" in result.stdout and "empty dialogue" in result.stdout
    assert f"inputs truncated to {cap} tokens: 1" in result.stdout and "few_shot prompt for" in result.stdout


def test_data_show_default_tokenizer_is_the_embedded_model(cli, needs_embedded_model):
    result = cli("data", "show", "builtin:summarization", "--rows", "1", "--split", "test")
    assert result.returncode == 0, result.stderr
    assert "<|im_start|>assistant" in result.stdout and "Summary:" in result.stdout


def test_bad_inputs_exit_2_with_clear_messages(cli, tmp_path, tiny_llama_dir):
    tok = ["--tokenizer", str(tiny_llama_dir)]
    (tmp_path / "no_col.csv").write_text("message,topic\nhello,greeting\nbye,farewell\n")
    (tmp_path / "broken.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    (tmp_path / "all_bad.jsonl").write_text('{"text": "", "label": "x"}\n{"text": "  ", "label": "y"}\n')
    (tmp_path / "one_class.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    hashes = tmp_path / "hashes.jsonl"
    hashes.write_text('{"text": "a", "label": "x###y", "split": "train"}\n{"text": "b", "label": "z", "split": '
                      '"train"}\n{"text": "c", "label": "z", "split": "test"}\n')
    cases = [
        (["data", "show", str(tmp_path / "missing.jsonl")], ["data source not found", "missing.jsonl"]),
        (["data", "show", str(tmp_path / "no_col.csv"), "--column", "text=body", "--column", "label=topic"],
         ["no column 'body'", "message, topic"]),
        (["data", "show", str(tmp_path / "broken.jsonl")], ["broken.jsonl, line 2: not valid JSON"]),
        (["data", "show", str(tmp_path / "all_bad.jsonl")], ["no usable rows left", "empty text: 2"]),
        (["data", "show", "builtin:classification", "--fraction", "1.5"], ["data.train_fraction = 1.5"]),
        (["data", "show", "builtin:classification", "--fraction", "0"], ["data.train_fraction = 0.0"]),
        (["data", "show", "builtin:classification", "--count", "500"], ["train_count = 500 is larger"]),
        (["data", "show", str(tmp_path / "one_class.jsonl")], ["single label 'x'"]),
        (["data", "show", "builtin:classification", "--set", "prompt.zero_shot=Pick one of {labels}"],
         ["prompt.zero_shot: the template has no {text} placeholder"]),
        (["data", "show", str(hashes), "--method", "lora"], ["label 'x###y' contains '###'"]),
        (["data", "show", "samsum"], ["cannot load dataset 'samsum'", "data.source"]),
        (["data", "show", "builtin:classification", "--split", "dev"], ["no split 'dev'"]),
    ]
    for args, needles in cases:
        assert_user_error(cli(*args, *tok, env={"HF_HUB_OFFLINE": "1"}), *needles)


def test_demo_shows_prompts_and_outputs_for_both_tasks(cli, needs_embedded_model):
    result = cli("demo", "--examples", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "classification · cls-0161" in out and "summarization · sum-0073" in out
    assert out.count("model:") == 2 and out.count("reference:") == 2 and "Class:" in out and "Summary:" in out
    assert "demo: 2 zero-shot prompts on smollm2-135m-instruct" in out
