"""Pillar 3, inference cost: the load tests' numbers, when the study ran them (Tables 6–9)."""

from __future__ import annotations

from tunebench.study.report.document import Heading, Para, Report, Table, fnum, label, money
from tunebench.study.results import StudyResults


def inference_section(results: StudyResults, report: Report) -> None:
    report.add(Heading("3. Inference cost"))
    if not results.inference:
        report.add(Para("No load-test results in this study. Produce them with the serve + load-test stage "
                        "(`loadtest: {enabled: true}` in the study file, then `tunebench run` again: finished "
                        "cells are reused), or for one trained cell with `tunebench bench serve --run "
                        "runs/<study>/<cell-id>`."))
        return
    cells = {c.id: c for c in results.cells}
    rows = []
    for row in results.inference:
        cell = cells.get(row["cell_id"])
        rows.append([cell.model if cell else "?", label(cell.method) if cell else "?", row["engine"],
                     fnum(row["max_rps"], 2), fnum(row["throughput_rps"], 2), fnum(row["p90_s"], 3),
                     fnum(row["tokens_per_request"], 1), money(row["usd_per_1k_tokens"]),
                     money(row["usd_per_1k_requests"]),
                     f"{row['instance']} at ${row['price_per_hour']:.3f}/h" if row.get("price_per_hour") else "–"])
    report.add(Table(["model", "method", "server", "max sustainable req/s", "throughput req/s", "p90 latency (s)",
                      "tokens/request", "cost per 1K tokens", "cost per 1K requests", "price"], rows,
                     "At the highest request rate meeting the SLO (the original's Tables 6–9)."))
