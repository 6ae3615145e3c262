"""The search report's fronts (issue 19, items 2 and 4), on a results.db and an Optuna journal written by hand:
a single-objective search builds its quality-vs-$ front from every (trial, epoch) point (Optuna's intermediate
values, their sign restored, or the checkpoints' epoch.json), a multi-objective one from its final points, and
a search over model.name gets a front against inference cost. The report says which."""

from __future__ import annotations

import json

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tunebench.rundir import RunDir
from tunebench.study.report import study_report, to_markdown
from tunebench.study.search.fronts import front_basis
from tunebench.study.search.loop import journal_storage
from tunebench.study.store import Cost, Metric, Store

CONFIG = {"defaults": {"data": {"task": "classification"}},
          "search": {"parameters": {"training.learning_rate": {"low": 1e-4, "high": 0.1, "log": True},
                                    "model.name": {"choices": ["a", "b"]}},
                     "objectives": [{"metric": "accuracy"}], "pruner": {"name": "median", "prune_on": "eval_loss"}}}
# cell: (state, train $, epochs trained, per-epoch eval_loss, where those are kept, accuracy, $ per 1K tokens)
TRIALS = {"c0": ("complete", 0.30, 3, [1.0, 0.8, 0.7], "optuna", 0.80, 0.002),
          "c1": ("pruned", 0.05, 1, [1.5], "optuna", 0.40, 0.001),
          "c2": ("complete", 0.60, 3, [0.9, 0.75, 0.72], "epoch.json", 0.85, 0.004)}


def write_search(where) -> None:
    with Store.open(where) as store:
        store.record_study("s", "", None, CONFIG)
        for cid, (_, usd, epochs, losses, _, accuracy, per_1k) in TRIALS.items():
            store.record_cells([{"cell_id": cid, "model": "a", "method": "lora", "task": "classification",
                                 "fraction": None, "count": None, "lora_r": 8, "lora_alpha": 16.0,
                                 "lora_dropout": 0.1, "epochs": 3, "seed": 0, "train_run": None, "epoch": None,
                                 "experiments": "[]", "params": "{}"}], {cid: ["train", "eval", "loadtest"]})
            for stage, metrics, cost in (
                    ("train", [Metric("epochs_done", epochs), Metric("eval_loss", losses[-1])],
                     Cost(wall_seconds=usd * 3600, instance="x", price_per_hour=1.0, usd=usd)),
                    ("eval", [Metric("accuracy", accuracy, accuracy - 0.1, accuracy + 0.1, 20)],
                     Cost(wall_seconds=36.0, instance="x", price_per_hour=1.0, usd=0.01))):
                store.stage_started(cid, stage)
                store.stage_done(cid, stage, seconds=cost.wall_seconds, metrics=metrics, cost=cost)
            store.stage_started(cid, "loadtest")
            store.stage_done(cid, "loadtest", seconds=5.0, metrics=[], inference=[{
                "engine": "batched", "max_rps": 4, "throughput_rps": 3.9, "p90_s": 0.5, "tokens_per_request": 120.0,
                "price_per_hour": 1.0, "instance": "x", "usd_per_1k_tokens": per_1k}])
    osearch = optuna.create_study(study_name="s", storage=journal_storage(where), direction="maximize")
    for cid, (state, _, _, losses, kept, accuracy, _) in TRIALS.items():
        if kept == "epoch.json":   # no pruner report: the checkpoints keep them
            for epoch, loss in enumerate(losses, 1):
                path = RunDir.for_cell(where, cid).checkpoints / f"epoch-{epoch}"
                path.mkdir(parents=True)
                (path / "epoch.json").write_text(json.dumps({"epoch": epoch, "step": epoch * 4, "eval_loss": loss}))
        # the driver reports eval_loss negated: it runs against the objective (maximize accuracy)
        intermediate = {e: -v for e, v in enumerate(losses, 1)} if kept == "optuna" else {}
        osearch.add_trial(create_trial(
            state=TrialState.PRUNED if state == "pruned" else TrialState.COMPLETE,
            value=None if state == "pruned" else accuracy, params={"training.learning_rate": 0.01},
            distributions={"training.learning_rate": FloatDistribution(1e-4, 0.1, log=True)},
            user_attrs={"cell_id": cid}, intermediate_values=intermediate))


def section(text: str, caption: str) -> list[list[str]]:
    """The rows of the table above `caption`."""
    lines = text[:text.index(caption)].rstrip("*\n ").splitlines()
    rows = []
    for line in reversed(lines):
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return list(reversed(rows))[2:]


def test_a_single_objective_search_builds_its_front_from_every_trial_and_epoch(tmp_path):
    write_search(tmp_path)
    text = to_markdown(study_report(tmp_path, tmp_path / "plots"), tmp_path)
    assert "built from every evaluated (trial, epoch) point: 7 points of 3 of the 3 trials" in text
    assert (tmp_path / "plots" / "search-front-epochs.png").stat().st_size > 0
    rows = section(text, "the quality-vs-$ front over (trial, epoch) points")
    # (cell, epoch, loss, $ to that epoch): c2's epoch 1 at $0.20 and loss 0.9 is beaten by c0's epoch 2
    assert [(r[6], r[1], r[3], r[4]) for r in rows] == [
        ("c1", "1 of 1", "1.5", "$0.0500"), ("c0", "1 of 3", "1", "$0.1000"), ("c0", "2 of 3", "0.8", "$0.2000"),
        ("c0", "3 of 3", "0.7", "$0.3000")]
    assert "validation eval_loss from epoch.json and optuna" in text


def test_a_search_over_models_gets_a_front_against_inference_cost(tmp_path):
    write_search(tmp_path)
    text = to_markdown(study_report(tmp_path, tmp_path / "plots"), tmp_path)
    assert (tmp_path / "plots" / "search-front-inference.png").stat().st_size > 0
    rows = section(text, "the quality-vs-inference-cost front")
    assert [(r[6], r[2], r[3]) for r in rows] == [("c1", "0.4", "$0.001000"), ("c0", "0.8", "$0.002000"),
                                                  ("c2", "0.85", "$0.004000")]


def test_the_report_says_a_multi_objective_front_is_of_final_points():
    assert "final points of an unpruned multi-objective search" in front_basis(True, [], 3)
    assert "no per-epoch validation values were recorded" in front_basis(False, [], 3)
