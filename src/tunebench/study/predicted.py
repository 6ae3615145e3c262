"""The cost predicted at launch, kept beside results.db, and set against what each cell then cost.

    tunebench run STUDY      -> predictions.json: each cell's predicted GPU-hours and $ (on-demand, spot),
                                written before the cell runs and never rewritten afterwards
    tunebench report DIR     -> predicted against actual, per cell and in total (also in --json)

A cell keeps the first prediction made for it while it had not run: a resumed study predicts only the cells
still to run, so the comparison is always against a figure made before the work, never recomputed after it.
The actual figure counts what the prediction covers (training and evaluation; a cell that evaluates an
epoch checkpoint of a shared training run is predicted without that training, and compared without its
share of it, which its trainer's cell carries in full).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PREDICTIONS = "predictions.json"
STAGES = ("train", "eval")   # what the prediction covers; the load test is not predicted


def predictions_path(study_dir: Path) -> Path:
    return Path(study_dir) / PREDICTIONS


def read_predictions(study_dir: Path) -> dict[str, Any]:
    path = predictions_path(study_dir)
    if not path.exists():
        return {"cells": {}, "launches": []}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"cells": {}, "launches": []}   # a damaged file: the report then shows no comparison
    return {"cells": data.get("cells") or {}, "launches": data.get("launches") or []}


def record_predictions(study_dir: Path, prediction: Any, *, already_run: set[str] | frozenset[str] = frozenset(),
                       when: str | None = None) -> int:
    """Add each cell's prediction (tunebench.study.predict.StudyPrediction) unless the cell has one or has
    already run; returns how many were added. Written atomically: a crash leaves the old file or the new."""
    from tunebench.rundir import write_atomic

    data = read_predictions(study_dir)
    when = when or datetime.now(UTC).isoformat(timespec="seconds")
    added = []
    for c in prediction.cells:
        if c.cell_id in data["cells"] or c.cell_id in already_run:
            continue
        data["cells"][c.cell_id] = {
            "predicted_at": when, "instance": c.instance, "price_per_hour": c.price_per_hour,
            "spot_price_per_hour": c.spot_price_per_hour, "preemptions_per_hour": c.preemptions_per_hour,
            "train_s": c.train_s, "eval_s": c.eval_s, "seconds": c.seconds, "usd": c.usd, "spot_usd": c.spot_usd,
            "shares_training": c.shares_training, "sources": list(c.sources)}
        added.append(c)
    if not added:
        return 0
    known = [c.seconds for c in added]
    data["launches"].append({"at": when, "cells": len(added),
                             "gpu_hours": None if None in known else sum(known) / 3600,
                             "usd": None if any(c.usd is None for c in added) else sum(c.usd for c in added)})
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(predictions_path(study_dir), json.dumps(data, indent=1) + "\n")
    return len(added)


def cells_already_run(study_dir: Path) -> set[str]:
    """Cells whose evaluation is done: a prediction for them now would be made after the fact."""
    from tunebench.study.store import Store

    if not (Path(study_dir) / "results.db").exists():
        return set()
    with Store.open_readonly(study_dir) as store:
        return {r["cell_id"] for r in store.rows("SELECT cell_id FROM stages WHERE stage = 'eval' AND "
                                                 "status = 'done'")}


def predict_at_launch(cells: list[Any], study_dir: Path, console: Any) -> None:
    """Predict the cells about to run and keep the figures; a prediction that cannot be made never stops
    the run (it is a note, and the report then has nothing to compare for those cells)."""
    from tunebench.study.predict import predict_cells

    try:
        done = cells_already_run(study_dir)
        todo = [c for c in cells if c.id not in done and c.id not in read_predictions(study_dir)["cells"]]
        if todo:
            record_predictions(study_dir, predict_cells(todo, study_dir), already_run=done)
    except Exception as err:  # a broken prediction is reported, the study still runs
        console.print(f"[yellow]note:[/yellow] no cost prediction recorded ({type(err).__name__}: {err})",
                      highlight=False)


def predict_search_at_launch(study: Any, study_dir: Path, console: Any) -> None:
    """A search's cells are sampled as it goes: keep, once, what its budget was predicted to cost at launch
    (configurations drawn from its space, as the dry run prints them), to set against what it spent."""
    from tunebench.rundir import write_atomic
    from tunebench.study.predict import predict_cells, sample_space

    try:
        data = read_predictions(study_dir)
        if any(launch.get("kind") == "search" for launch in data["launches"]):
            return
        cells = sample_space(study)
        prediction = predict_cells(cells, study_dir)
        trials = study.config.search.budget.trials
        usd, spot, hours = prediction.total(), prediction.total(spot=True), prediction.hours
        mean = (lambda v: None if v is None else v / len(cells))  # noqa: E731 - per drawn configuration
        data["launches"].append({
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "kind": "search", "trials": trials,
            "draws": len(cells), "usd_per_trial": mean(usd), "spot_usd_per_trial": mean(spot),
            "gpu_hours_per_trial": mean(hours),
            "usd": None if usd is None or trials is None else mean(usd) * trials})
        Path(study_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(predictions_path(study_dir), json.dumps(data, indent=1) + "\n")
    except Exception as err:  # a broken prediction is reported, the search still runs
        console.print(f"[yellow]note:[/yellow] no cost prediction recorded ({type(err).__name__}: {err})",
                      highlight=False)


def search_launch(study_dir: Path) -> dict[str, Any] | None:
    """The search's launch prediction, with what its trials then spent (training and evaluation)."""
    from tunebench.study.store import Store

    launch = next((x for x in read_predictions(study_dir)["launches"] if x.get("kind") == "search"), None)
    if launch is None or not (Path(study_dir) / "results.db").exists():
        return None
    with Store.open_readonly(study_dir) as store:
        rows = store.rows("SELECT COUNT(DISTINCT cell_id) AS n, SUM(usd) AS usd FROM costs WHERE stage IN "
                          "('train', 'eval')")
    return {**launch, "cells_run": rows[0]["n"] if rows else 0, "actual_usd": rows[0]["usd"] if rows else None}


# ---------------------------------------------------------------- predicted against actual


@dataclass
class CellComparison:
    cell_id: str
    predicted_s: float | None
    predicted_usd: float | None
    predicted_spot_usd: float | None
    actual_s: float | None
    actual_usd: float | None
    predicted_at: str = ""

    @staticmethod
    def ratio(actual: float | None, predicted: float | None) -> float | None:
        return actual / predicted if actual is not None and predicted else None


@dataclass
class Comparison:
    cells: list[CellComparison] = field(default_factory=list)

    def total(self, name: str) -> float | None:
        values = [getattr(c, name) for c in self.cells]
        return None if not values or any(v is None for v in values) else sum(values)

    def as_json(self) -> dict[str, Any]:
        def gpu_h(s: float | None) -> float | None:
            return None if s is None else s / 3600

        rows = [{"cell": c.cell_id, "predicted_at": c.predicted_at, "predicted_gpu_hours": gpu_h(c.predicted_s),
                 "actual_gpu_hours": gpu_h(c.actual_s), "predicted_usd": c.predicted_usd,
                 "predicted_spot_usd": c.predicted_spot_usd, "actual_usd": c.actual_usd,
                 "actual_over_predicted": CellComparison.ratio(c.actual_usd, c.predicted_usd)} for c in self.cells]
        total = {"predicted_gpu_hours": gpu_h(self.total("predicted_s")), "actual_gpu_hours":
                 gpu_h(self.total("actual_s")), "predicted_usd": self.total("predicted_usd"),
                 "predicted_spot_usd": self.total("predicted_spot_usd"), "actual_usd": self.total("actual_usd")}
        total["actual_over_predicted"] = CellComparison.ratio(total["actual_usd"], total["predicted_usd"])
        return {"cells": rows, "total": total}


def compare(study_dir: Path) -> Comparison:
    """Each predicted cell that has run (its evaluation done) against its recorded training and evaluation."""
    from tunebench.study.store import Store

    predicted = read_predictions(study_dir)["cells"]
    out = Comparison()
    if not predicted or not (Path(study_dir) / "results.db").exists():
        return out
    with Store.open_readonly(study_dir) as store:
        done = {r["cell_id"] for r in store.rows("SELECT cell_id FROM stages WHERE stage = 'eval' AND "
                                                 "status = 'done'")}
        costs: dict[str, list[dict[str, Any]]] = {}
        for r in store.rows("SELECT cell_id, stage, wall_seconds, usd, note FROM costs"):
            costs.setdefault(r["cell_id"], []).append(r)
    for cid, p in sorted(predicted.items()):
        if cid not in done:
            continue
        rows = [r for r in costs.get(cid, []) if r["stage"] in STAGES and not (
            p.get("shares_training") and r["stage"] == "train" and (r["note"] or "").startswith("share of"))]
        out.cells.append(CellComparison(
            cid, p.get("seconds"), p.get("usd"), p.get("spot_usd"),
            sum(r["wall_seconds"] or 0.0 for r in rows) if rows else None,
            sum(r["usd"] or 0.0 for r in rows) if rows and all(r["usd"] is not None for r in rows) else None,
            p.get("predicted_at", "")))
    return out
