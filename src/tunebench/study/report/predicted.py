"""The report's "Predicted against actual" section: each cell's GPU-hours and $ predicted at launch (kept in
predictions.json before the cell ran, tunebench.study.predicted) against what it then cost, and the total."""

from __future__ import annotations

from pathlib import Path

from tunebench.study.report.document import Heading, Para, Report, Table


def predicted_section(report: Report, study_dir: Path) -> None:
    from tunebench.study.predicted import PREDICTIONS, compare, search_launch

    comparison = compare(study_dir)
    search = search_launch(study_dir)
    if not comparison.cells and search is None:
        return
    report.add(Heading("Predicted against actual cost"))
    if search is not None:
        report.add(Para(search_text(search)))
    if not comparison.cells:
        return

    def num(v: float | None, digits: int = 4) -> str:
        return "?" if v is None else f"{v:.{digits}f}"

    def hours(s: float | None) -> str:
        return num(None if s is None else s / 3600)

    def ratio(actual: float | None, predicted: float | None) -> str:
        return "?" if actual is None or not predicted else f"{actual / predicted:.2f}×"

    rows = [[c.cell_id, hours(c.predicted_s), hours(c.actual_s), num(c.predicted_usd), num(c.predicted_spot_usd),
             num(c.actual_usd), ratio(c.actual_usd, c.predicted_usd)] for c in comparison.cells]
    t = comparison.as_json()["total"]
    rows.append(["**total**", num(t["predicted_gpu_hours"]), num(t["actual_gpu_hours"]), num(t["predicted_usd"]),
                 num(t["predicted_spot_usd"]), num(t["actual_usd"]), ratio(t["actual_usd"], t["predicted_usd"])])
    report.add(Para(
        f"What `tunebench run` predicted before each cell ran (`{PREDICTIONS}`, written at launch and never "
        "recomputed) against what its training and evaluation then cost (results.db). A cell that evaluates an "
        "epoch checkpoint of a shared training run is counted without that training; `?`: the prediction had "
        "no figure for it (no earlier run of that model, method and GPU). Spot is predicted only: the runs were "
        "priced on-demand."))
    report.add(Table(["cell", "predicted GPU-h", "actual GPU-h", "predicted $ on-demand", "predicted $ spot",
                      "actual $", "actual / predicted"], rows, "predicted at launch against actual, per cell"))


def search_text(s: dict) -> str:
    def usd(v: float | None) -> str:
        return "?" if v is None else f"${v:.4f}"

    budget = f"{s['trials']} trials × {usd(s['usd_per_trial'])} = {usd(s['usd'])}" if s.get("trials") else \
        f"{usd(s['usd_per_trial'])} a trial (the budget gives no trial count)"
    spot = f" ({usd(s['spot_usd_per_trial'])} a trial on spot)" if s.get("spot_usd_per_trial") is not None else ""
    return (f"At launch ({s['at']}) the search was predicted to cost {budget} on-demand{spot}, the mean of "
            f"{s['draws']} configurations drawn from its space, before pruning (which only lowers it). Its "
            f"{s['cells_run']} trial cell(s) then spent {usd(s['actual_usd'])} on training and evaluation. "
            "Trials are not predicted one by one.")
