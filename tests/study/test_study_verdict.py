"""The report's verdict (a paired bootstrap against the best prompting method) and the break-even priced per
method from its own load test, on stores filled with known per-example scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.study.report import study_report, to_markdown
from tunebench.study.report.verdict import paired_bootstrap
from tunebench.study.store import Cost, Metric, Store


def add(store: Store, cell_id: str, method: str, correct: list[int], prompt_tokens: float,
        usd_per_1k_requests: float | None = None) -> None:
    """A classification cell of model 'm' evaluated on examples e0..e{n-1}: `correct` per example."""
    params = {"model": {"name": "m"}, "method": method, "data": {"task": "classification", "seed": 0},
              "training": {"seed": 0}}
    lora = method == "lora"
    store.record_cells([{"cell_id": cell_id, "model": "m", "method": method, "task": "classification",
                         "fraction": None, "count": None, "lora_r": 8 if lora else None,
                         "lora_alpha": 32.0 if lora else None, "lora_dropout": 0.1 if lora else None,
                         "epochs": 2 if lora else None, "seed": 0, "train_run": None, "epoch": None,
                         "experiments": "[]", "params": json.dumps(params)}],
                       {cell_id: ["eval"] + (["train"] if lora else [])})
    if lora:
        store.stage_started(cell_id, "train")
        store.stage_done(cell_id, "train", seconds=3600.0, metrics=[Metric("train_examples", 100)],
                         cost=Cost(wall_seconds=3600.0, device="cpu", instance="cpu-2core", price_per_hour=0.36,
                                   usd=0.36))
    eval_dir = store.study_dir / cell_id / "eval"
    eval_dir.mkdir(parents=True)
    predictions = eval_dir / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"id": f"e{i}", "score": float(c)}) + "\n"
                                   for i, c in enumerate(correct)))
    n, acc = len(correct), sum(correct) / len(correct)
    store.stage_started(cell_id, "eval")
    store.stage_done(cell_id, "eval", seconds=10.0, metrics=[
        Metric("accuracy", acc, max(0.0, acc - 0.1), min(1.0, acc + 0.1), n),
        Metric("prompt_tokens_mean", prompt_tokens, prompt_tokens - 2, prompt_tokens + 2, n),
        Metric("output_tokens_mean", 2.0, None, None, n)],
        cost=Cost(wall_seconds=10.0, device="cpu", instance="cpu-2core", price_per_hour=0.36, usd=0.001,
                  tokens=int(n * (prompt_tokens + 2)), tokens_per_second=100.0),
        artifacts={"predictions": predictions})
    if usd_per_1k_requests is not None:
        store.stage_started(cell_id, "loadtest")
        store.stage_done(cell_id, "loadtest", seconds=30.0, metrics=[], inference=[{
            "engine": "batched", "max_rps": 0.36 / (usd_per_1k_requests / 1000) / 3600, "throughput_rps": None,
            "p90_s": 1.0, "tokens_per_request": prompt_tokens + 2, "price_per_hour": 0.36, "instance": "cpu-2core",
            "usd_per_1k_tokens": None, "usd_per_1k_requests": usd_per_1k_requests, "result": None}])


def report_of(tmp_path: Path, cells: list[tuple]) -> tuple[str, list[str]]:
    with Store.open(tmp_path) as store:
        store.record_study("v", "", None, {})
        for cell in cells:
            add(store, *cell)
    report = study_report(tmp_path, tmp_path / "plots")
    return to_markdown(report, tmp_path), report.verdicts


def test_no_better_than_zero_shot_means_the_break_even_does_not_apply(tmp_path):
    """The issue's case: 33.3% vs 33.3% on a 3-label task, n = 12 (different examples right)."""
    zero = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    tuned = [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    text, verdicts = report_of(tmp_path, [("zs", "zero_shot", zero, 300.0), ("lora", "lora", tuned, 100.0)])
    assert len(verdicts) == 1 and "LoRA is not significantly better than zero-shot at this n" in verdicts[0]
    assert "+0.0 percentage points" in verdicts[0] and "n=12" in verdicts[0]
    assert verdicts[0].endswith("the break-even does not apply.")
    assert "vs zero-shot: does not apply (not significantly better)" in text
    assert "pays back after 1" not in text and "requests; saves $" not in text
    assert text.count("Verdict") == 2   # leading the task's quality section and its break-even


def test_significantly_better_pays_back_priced_by_each_methods_load_test(tmp_path):
    few = [1] * 20 + [0] * 30
    tuned = [1] * 45 + [0] * 5
    # measured per 1K requests: few-shot $2.00 (its long prompts), LoRA $0.10 (merged, short prompts)
    text, verdicts = report_of(tmp_path, [("zs", "zero_shot", [1] * 10 + [0] * 40, 300.0, 0.5),
                                          ("fs", "few_shot", few, 1000.0, 2.0),
                                          ("lora", "lora", tuned, 100.0, 0.1)])
    low, high = paired_bootstrap([a - b for a, b in zip(tuned, few, strict=True)])
    assert low > 0
    # training $0.36 / ($2.00 - $0.10 per 1K requests) = 189 requests
    assert verdicts == [f"Verdict: m: fine-tuning (LoRA) is significantly better than few-shot: +50.0 percentage "
                        f"points [{low * 100:+.1f}, {high * 100:+.1f}] (paired bootstrap, n=50); pays back after "
                        "189 requests."]
    assert "| few-shot | 40.0 [30.0, 50.0] n=50 | 1,002.0 [1,000.0, 1,004.0] n=50 | $2.00 [$2.00, $2.00] |" in text
    assert "load test: batched server, 0.05 req/s sustained, $0.360/h (cpu-2core)" in text
    assert "vs few-shot: 189 [189, 189] requests" in text


def test_paired_bootstrap_is_seeded_and_centred():
    diffs = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert paired_bootstrap(diffs) == paired_bootstrap(diffs)
    low, high = paired_bootstrap(diffs)
    assert low <= sum(diffs) / len(diffs) <= high
    assert paired_bootstrap([0.0] * 10) == (pytest.approx(0.0), pytest.approx(0.0))
