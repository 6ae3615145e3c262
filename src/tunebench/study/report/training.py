"""Pillar 2, time and cost to train, per cell (Table 5)."""

from __future__ import annotations

from tunebench.study.report.document import Heading, Para, Report, Table, duration, label, money
from tunebench.study.results import StudyResults


def training_section(results: StudyResults, report: Report) -> None:
    report.add(Heading("2. Time and cost to train"))
    rows = []
    for cell in results.cells:
        cost = cell.costs.get("train")
        if cost is None:
            continue
        tps = cost.get("tokens_per_second")
        price = f"{cost['instance']} at ${cost['price_per_hour']:.3f}/h" if cost.get("price_per_hour") else "–"
        rows.append([cell.model, cell.task, label(cell.method),
                     str(cell.train_examples) if cell.train_examples is not None else "?",
                     str(cell.axes["epochs"] or "default"), duration(cost["wall_seconds"]), cost.get("device") or "?",
                     f"{tps:,.0f}" if tps else "–", money(cost.get("usd")), price, cost.get("note") or "", cell.id])
    if not rows:
        report.add(Para("No training run has finished in this study."))
        return
    report.add(Table(["model", "task", "method", "train examples", "epochs", "wall time", "device", "tokens/s",
                      "cost", "price", "note", "cell"], rows,
                     "One training run per row (n=1 run each): wall time of the training loop, training tokens per "
                     "second, cost = wall time × the hourly price (the original's Table 5)."))
