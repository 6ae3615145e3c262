"""The demo's fourth pillar: its classification cells are served and load-tested, each with its own evaluated
prompts (the fine-tuned one merged), so the report's inference cost and break-even are measured."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tunebench.config.study import load_study
from tunebench.evaluate.runner import Scored, write_outputs
from tunebench.loadtest.stage import evaluated_prompts, serve_options
from tunebench.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_load_tests_zero_shot_few_shot_and_lora_on_the_cpu_budget():
    study = load_study(REPO / "studies" / "demo.yaml")
    tested = [c for c in study.cells if c.config.loadtest.enabled]
    assert sorted((c.config.data.task, c.config.method) for c in tested) == [
        ("classification", "few_shot"), ("classification", "lora"), ("classification", "zero_shot")]
    assert all(c.config.data.train_count == 32 for c in tested if c.config.method == "lora")  # not the sweep's
    for cell in tested:
        lt = cell.config.loadtest
        assert (lt.engines, len(lt.rates or []), lt.duration, lt.warmup, lt.repeat, lt.bisect) == \
            (["batched"], 3, 10.0, 2.0, 1, 0)
        merged = "--merge" in serve_options(cell.config)
        assert merged == (cell.config.method == "lora")   # served as it would be deployed


def test_serving_keeps_the_evaluated_dtype():
    study = load_study(REPO / "studies" / "demo.yaml", sets=["model.dtype=bfloat16"])
    options = serve_options(study.cells[0].config)
    assert options[options.index("--dtype") + 1] == "bfloat16"


def test_each_cell_is_load_tested_with_the_prompts_it_was_evaluated_on(tmp_path):
    cell = load_study(REPO / "studies" / "demo.yaml").cells[0].config
    run = RunDir(tmp_path / "cell")
    assert evaluated_prompts(cell, run) is None   # not evaluated yet: the built-in set is used
    out = run.eval_dir("test", cell.method)
    out.mkdir(parents=True)
    examples = [SimpleNamespace(id=f"e{i}", target="space") for i in range(3)]
    prompts = [SimpleNamespace(text=f"Classify this {i}\nClass:", n_tokens=5, truncated=False, skipped=i == 1)
               for i in range(3)]
    records = [{"raw_output": "space", "prediction": "space", "score": 1.0}] * 2
    write_outputs(out, examples, prompts, Scored(records, {}), {})
    lines = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert lines == [{"id": "e0", "prompt": "Classify this 0\nClass:"},
                     {"id": "e2", "prompt": "Classify this 2\nClass:"}]   # a skipped prompt was never sent
    assert evaluated_prompts(cell, run).texts == ["Classify this 0\nClass:", "Classify this 2\nClass:"]
