"""Predicted against actual (issue 19, item 5): the prediction made at launch is kept beside results.db and
never recomputed; the report and `tunebench report --json` set each cell's and the total's predicted GPU-hours
and $ against what the cell then cost."""

from __future__ import annotations

import json
import sqlite3

from pytest import approx
from rich.console import Console
from test_study_report import add_cell
from tinystudy import tiny_study, write_study

from tunebench.study.predict import CellPrediction, StudyPrediction
from tunebench.study.predicted import PREDICTIONS, compare, predict_at_launch, read_predictions, record_predictions
from tunebench.study.report import study_report, to_markdown
from tunebench.study.store import Cost, Metric, Store


def predicted(cid: str, train_s: float | None, eval_s: float, shares: bool = False) -> CellPrediction:
    return CellPrediction(cid, train_s=train_s, eval_s=eval_s, instance="cpu-2core", price_per_hour=3.6,
                          shares_training=shares, trains=cid != "zs")


def finish(store: Store, cid: str, stage: str, seconds: float, note: str | None = None) -> None:
    store.stage_started(cid, stage)
    store.stage_done(cid, stage, seconds=seconds, metrics=[Metric("accuracy", 0.5, 0.4, 0.6, 10)] if stage == "eval"
                     else [], cost=Cost(wall_seconds=seconds, instance="cpu-2core", price_per_hour=3.6,
                                        usd=seconds / 3600 * 3.6, note=note))


def test_the_report_and_json_compare_the_launch_prediction_with_what_each_cell_cost(tmp_path, cli):
    with Store.open(tmp_path) as store:
        store.record_study("known", "", None, {})
        for cid in ("lora0", "lora1", "zs"):
            add_cell(store, cid, "m", "zero_shot" if cid == "zs" else "lora")
    # at launch: lora1 evaluates lora0's epoch checkpoint (its training predicted as shared, so 0)
    record_predictions(tmp_path, StudyPrediction([predicted("lora0", 900.0, 100.0), predicted("lora1", None, 100.0,
                                                  shares=True), predicted("zs", None, 50.0)], {}), when="launch")
    with Store.open(tmp_path) as store:   # then the run: lora0 took 1100 + 100 s, lora1 100 s plus its share
        finish(store, "lora0", "train", 1100.0)
        finish(store, "lora0", "eval", 100.0)
        finish(store, "lora1", "train", 550.0, note="share of the training run of lora0")
        finish(store, "lora1", "eval", 80.0)
        finish(store, "zs", "eval", 70.0)
    comparison = compare(tmp_path).as_json()
    rows = {r["cell"]: r for r in comparison["cells"]}
    assert rows["lora0"]["predicted_usd"] == approx(1.0) and rows["lora0"]["actual_usd"] == approx(1.2)  # $3.6/h
    assert rows["lora1"]["actual_usd"] == approx(0.08)   # its share of lora0's training is lora0's, as predicted
    assert comparison["total"]["predicted_usd"] == approx(1.15) and comparison["total"]["actual_usd"] == approx(1.35)
    assert rows["zs"]["predicted_at"] == "launch"
    text = to_markdown(study_report(tmp_path, tmp_path / "plots"), tmp_path)
    assert "## Predicted against actual cost" in text
    assert "| lora0 | 0.2778 | 0.3333 | 1.0000 | ? | 1.2000 | 1.20× |" in text
    assert "| **total** | 0.3194 | 0.3750 | 1.1500 | ? | 1.3500 | 1.17× |" in text
    result = cli("report", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout)["predicted_vs_actual"]
    assert said["total"]["predicted_usd"] == approx(1.15) and len(said["cells"]) == 3


def test_a_cell_keeps_its_first_prediction_and_a_cell_that_ran_gets_none(tmp_path):
    record_predictions(tmp_path, StudyPrediction([predicted("a", 100.0, 10.0)], {}), when="first")
    added = record_predictions(tmp_path, StudyPrediction([predicted("a", 999.0, 10.0), predicted("b", 5.0, 1.0),
                                                          predicted("c", 5.0, 1.0)], {}), already_run={"c"},
                               when="second")
    cells = read_predictions(tmp_path)["cells"]
    assert added == 1 and cells["a"]["train_s"] == 100.0 and cells["a"]["predicted_at"] == "first"
    assert "c" not in cells and cells["b"]["predicted_at"] == "second"
    assert [launch["cells"] for launch in read_predictions(tmp_path)["launches"]] == [1, 1]


def test_tunebench_run_writes_the_prediction_before_the_cells_run(tiny_llama_dir, tmp_path, cli):
    study = write_study(tmp_path, tiny_study(tiny_llama_dir, "  - method: zero_shot", limit=4))
    out = tmp_path / "runs"
    result = cli("run", str(study), "--out", str(out))
    assert result.returncode == 0, result.stderr
    (cid, entry), = read_predictions(out)["cells"].items()
    with sqlite3.connect(out / "results.db") as conn:
        started = conn.execute("SELECT started FROM stages WHERE cell_id = ? AND stage = 'eval'", (cid,)).fetchone()[0]
    assert entry["predicted_at"] <= started
    # the study's first run of this model: no measured rate yet, so the prediction says unknown, not a guess
    assert entry["eval_s"] is None and entry["usd"] is None
    (row,) = compare(out).as_json()["cells"]
    assert row["predicted_usd"] is None and row["actual_usd"] > 0
    before = (out / PREDICTIONS).read_text()
    predict_at_launch(load_cells(study), out, Console(quiet=True))   # a rerun predicts nothing that has run
    assert (out / PREDICTIONS).read_text() == before


def load_cells(path):
    from tunebench.config.study import load_study

    return load_study(path).cells


def test_a_search_keeps_its_launch_prediction_once_and_the_report_sets_it_against_the_spend(tiny_llama_dir,
                                                                                            tmp_path):
    from test_search import search_study

    from tunebench.config.study import load_study
    from tunebench.study.predicted import predict_search_at_launch

    spec = "  parameters:\n    lora.r: {low: 2, high: 8}\n  budget: {trials: 3}\n"
    study = load_study(write_study(tmp_path, search_study(tiny_llama_dir, spec)))
    out = tmp_path / "runs"
    predict_search_at_launch(study, out, Console(quiet=True))
    predict_search_at_launch(study, out, Console(quiet=True))   # a resumed search keeps the first
    (launch,) = read_predictions(out)["launches"]
    assert launch["kind"] == "search" and launch["trials"] == 3 and launch["draws"] >= 1
    with Store.open(out) as store:
        store.record_study("search", "", None, {})
        add_cell(store, "t0", "m", "lora")
        finish(store, "t0", "train", 360.0)
        finish(store, "t0", "eval", 36.0)
    text = to_markdown(study_report(out, out / "plots"), out)
    assert "the search was predicted to cost 3 trials ×" in text and "1 trial cell(s) then spent $0.3960" in text
