"""`tunebench train` through the real entry point: a run end to end, and the refusals (exit 2, no traceback)."""

from __future__ import annotations

import json

from peft import PeftConfig

STUDY = """name: clitrain
defaults:
  model: {{name: {model}}}
  method: lora
  data: {{source: "builtin:classification", task: classification, train_count: 12}}
  training: {{epochs: 1, tokens_per_batch: 512, max_seq_len: 256}}
{experiments}"""


def test_train_end_to_end_then_refuse_to_overwrite(cli, tiny_llama_dir, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(model=tiny_llama_dir, experiments=""))
    out = tmp_path / "runs"
    result = cli("train", str(study), "--out", str(out), "--set", "lora.r=4")
    assert result.returncode == 0, result.stderr
    line = [row for row in result.stdout.splitlines() if row.startswith("trained ")]
    assert len(line) == 1 and "tok/s" in line[0] and "cpu-2core" in line[0]
    (cell_dir,) = out.iterdir()
    summary = json.loads((cell_dir / "train" / "summary.json").read_text())
    assert summary["steps"] > 0 and PeftConfig.from_pretrained(cell_dir / "train" / "adapter").r == 4
    assert "lora" in (cell_dir / "resolved-config.yaml").read_text()

    again = cli("train", str(study), "--out", str(out), "--set", "lora.r=4")
    assert again.returncode == 2 and "already trained" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr


def test_train_refusals(cli, tiny_neox_dir, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(model=tiny_neox_dir, experiments="experiments:\n  - sweep: {lora.r: [4, 8]}\n"))
    # (The engine's own refusals, such as QLoRA without CUDA or --resume without a checkpoint, are tested in
    # process in test_train_engine.py; these are the command's.)
    cases = {
        "expands to 2 cells": ([], "tunebench run"),
        "training.epochs = 0": (["--set", "lora.r=4", "--set", "training.epochs=0"], "training.epochs"),
        "--gpus 0": (["--set", "lora.r=4", "--gpus", "0"], "without --gpus"),
    }
    for expected, (args, fix) in cases.items():
        result = cli("train", str(study), "--out", str(tmp_path / "runs"), *args)
        assert result.returncode == 2, (expected, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert fix in result.stderr.split("fix:")[1]
