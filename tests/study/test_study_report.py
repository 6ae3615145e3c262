"""The report's arithmetic on a store filled with known numbers: break-even, seeds as mean ± std, instruct
and base variants in one row, and the stated serving-cost assumption."""

from __future__ import annotations

import json
import math

import pytest

from tunebench.study import breakeven as be
from tunebench.study.report import study_report, to_markdown
from tunebench.study.store import Cost, Metric, Store


def test_payback_is_training_cost_over_the_saving_per_request():
    price = be.TokenPrice(usd_per_1k_tokens=0.002, source="given")
    few_shot = be.cost_per_1k_requests(be.Interval(900.0, 880.0, 920.0), price)   # $1.80 per 1K requests
    tuned = be.cost_per_1k_requests(be.Interval.exact(100.0), price)              # $0.20 per 1K requests
    assert few_shot.value == pytest.approx(1.8) and tuned.value == pytest.approx(0.2)
    p = be.payback(16.0, few_shot, tuned)
    assert p.requests == pytest.approx(16.0 / (1.6 / 1000))                       # 10,000 requests
    assert p.low == pytest.approx(16.0 / (1.64 / 1000)) and p.high == pytest.approx(16.0 / (1.56 / 1000))
    assert p.saving_per_1m.value == pytest.approx(1600.0)
    never = be.payback(16.0, tuned, few_shot)
    assert never.requests is None and never.saving_per_1m.value < 0


def test_original_cost_formula():
    # 135 requests/s of ~120 tokens on a $1.624/h instance: about $0.00003 per 1K tokens
    assert be.token_price_from_throughput(1.624, 135 * 120) == pytest.approx(2.78e-5, rel=0.01)
    assert be.token_price_from_throughput(1.0, 0.0) == math.inf


def add_cell(store: Store, cell_id: str, model: str, method: str, seed: int = 0) -> None:
    params = {"model": {"name": model}, "method": method, "data": {"task": "classification", "seed": seed},
              "training": {"seed": 0}}
    store.record_cells([{"cell_id": cell_id, "model": model, "method": method, "task": "classification",
                         "fraction": None, "count": None, "lora_r": 8 if method == "lora" else None,
                         "lora_alpha": 32.0 if method == "lora" else None,
                         "lora_dropout": 0.1 if method == "lora" else None, "epochs": 2 if method == "lora" else None,
                         "seed": seed, "train_run": None, "epoch": None, "experiments": "[]",
                         "params": json.dumps(params)}], {cell_id: ["eval"] + (["train"] if method == "lora" else [])})


def finish_eval(store: Store, cell_id: str, accuracy: float, prompt_tokens: float) -> None:
    store.stage_started(cell_id, "eval")
    store.stage_done(cell_id, "eval", seconds=10.0, metrics=[
        Metric("accuracy", accuracy, accuracy - 0.1, accuracy + 0.1, 50),
        Metric("prompt_tokens_mean", prompt_tokens, prompt_tokens - 2, prompt_tokens + 2, 50),
        Metric("output_tokens_mean", 2.0, None, None, 50)],
        cost=Cost(wall_seconds=10.0, device="cpu", instance="cpu-2core", price_per_hour=0.36, usd=0.001,
                  tokens=int(50 * (prompt_tokens + 2)), tokens_per_second=100.0))


@pytest.fixture
def study_dir(tmp_path):
    with Store.open(tmp_path) as store:
        store.record_study("known", "numbers chosen by hand", None, {})
        add_cell(store, "zs", "redpajama-3b-instruct", "zero_shot")
        add_cell(store, "fs", "redpajama-3b-instruct", "few_shot")
        for seed, accuracy in ((0, 0.70), (1, 0.80)):
            add_cell(store, f"lora{seed}", "redpajama-3b", "lora", seed=seed)
            store.stage_started(f"lora{seed}", "train")
            store.stage_done(f"lora{seed}", "train", seconds=3600.0, metrics=[Metric("train_examples", 1000)],
                             cost=Cost(wall_seconds=3600.0, device="cpu", instance="cpu-2core", price_per_hour=0.36,
                                       usd=0.36))
            finish_eval(store, f"lora{seed}", accuracy, 98.0)
        finish_eval(store, "zs", 0.30, 298.0)
        finish_eval(store, "fs", 0.40, 998.0)
    return tmp_path


def test_report_numbers_from_a_known_store(study_dir):
    report = study_report(study_dir, study_dir / "plots")
    text = to_markdown(report, study_dir)
    # the -instruct prompting cells share the base model's row with its fine-tuned cells
    row = "| redpajama-3b | 30.0 [20.0, 40.0] n=50 | 40.0 [30.0, 50.0] n=50 | 75.0 ± 7.1 (2 seeds, n=50 each) |"
    assert row in text
    # serving cost per token from the evaluation throughput: $0.36/h at 100 tokens/s = $0.001 per 1K tokens
    assert "assumed: cpu-2core ($0.360/h) serving at 100 tokens/s" in text
    # per 1K requests: (998 ± 2 + 2) tokens × $0.001 = $1.00 few-shot; (98 + 2) × $0.001 = $0.10 fine-tuned;
    # training $0.36 / ($0.90 / 1000) = 400 requests (399 to 401 within the token intervals)
    assert "| few-shot | 40.0 [30.0, 50.0] n=50 | 1,000.0 [998.0, 1,002.0] n=50 | $1.00 [$0.998, $1.00]" in text
    lora = "| LoRA | 75.0 ± 7.1 (2 seeds, n=50 each) | 100.0 [100.0, 100.0] n=50 | $0.100 [$0.100, $0.100] | $0.360"
    assert lora in text
    assert "vs few-shot: 400 [399, 401] requests; saves $900.00 per 1M" in text
    assert "vs zero-shot: 1,800 [1,782, 1,818] requests" in text
    assert (study_dir / "plots" / "breakeven-classification-redpajama-3b.png").exists()


def add_sized_lora(store: Store, cell_id: str, size: dict, used: int, accuracy: float) -> None:
    """A LoRA cell sized by data.train_count or data.train_fraction, trained on `used` examples."""
    params = {"model": {"name": "m"}, "method": "lora", "data": {"task": "classification", "seed": 0, **size},
              "training": {"seed": 0}}
    store.record_cells([{"cell_id": cell_id, "model": "m", "method": "lora", "task": "classification",
                         "fraction": size.get("train_fraction"), "count": size.get("train_count"), "lora_r": 8,
                         "lora_alpha": 32.0, "lora_dropout": 0.1, "epochs": 2, "seed": 0, "train_run": None,
                         "epoch": None, "experiments": "[]", "params": json.dumps(params)}],
                       {cell_id: ["train", "eval"]})
    store.stage_started(cell_id, "train")
    store.stage_done(cell_id, "train", seconds=60.0, metrics=[Metric("train_examples", used)])
    finish_eval(store, cell_id, accuracy, 50.0)


def test_sample_efficiency_shows_what_each_cell_asked_for_and_used(tmp_path):
    with Store.open(tmp_path) as store:
        store.record_study("sizes", "", None, {})
        add_sized_lora(store, "c8", {"train_count": 8}, 8, 0.5)
        add_sized_lora(store, "c500", {"train_count": 500}, 144, 0.9)
        add_sized_lora(store, "half", {"train_fraction": 0.5}, 72, 0.8)
    text = to_markdown(study_report(tmp_path, tmp_path / "plots"), tmp_path)
    assert "| m | LoRA | train_count 8 | 8 | 50.0 [40.0, 60.0] n=50 |" in text
    assert "| m | LoRA | 50% of the training split | 72 | 80.0 [70.0, 90.0] n=50 |" in text
    assert "| m | LoRA | train_count 500 | 144 of 500 asked | 90.0 [80.0, 100.0] n=50 |" in text
    assert " 1 of the data" not in text
    assert "Wilson score interval" in text


def test_report_json_prints_the_headline_numbers(cli, study_dir):
    result = cli("report", str(study_dir), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["report"] == str(study_dir / "report.md") and (study_dir / "report.md").exists()
    assert [t["table"] for t in doc["headline"]][:1] == ["classification: accuracy (%)"], doc
    quality = doc["headline"][0]
    assert quality["rows"][0]["model"] == "redpajama-3b" and quality["rows"][0]["few-shot"] == "40.0 [30.0, 50.0] n=50"
