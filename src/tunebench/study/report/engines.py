"""Engines side by side (issue 22): one table per cell load-tested on more than one server.

For each engine: its version, the max sustainable request rate at the SLO, output tokens/s and p90 latency
there, time to first token (when the load test streamed), $ per 1K tokens, and, for a fine-tuned cell, the
break-even volume on that engine: training cost ÷ (cost per request prompted − cost per request fine-tuned),
both requests priced at that engine's cost per token. The command lines follow the table, so a reader can
start the same servers.
"""

from __future__ import annotations

from typing import Any

from tunebench.study import breakeven as be
from tunebench.study.report.document import Heading, Para, Report, Table, by_model_method, count, fnum, label, money
from tunebench.study.results import FINE_TUNED, PROMPTING, Entry, StudyResults


def engines_section(results: StudyResults, report: Report) -> None:
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for row in results.inference:
        by_cell.setdefault(row["cell_id"], []).append(row)
    cells = {c.id: c for c in results.cells}
    compared = {cid: rows for cid, rows in by_cell.items() if len(rows) > 1 and cid in cells}
    if not compared:
        return
    report.add(Heading("Engines compared", 3),
               Para("The same load-test spec against each server of a cell, at its maximum sustainable rate. "
                    "Break-even prices the fine-tuned and the prompted requests at that engine's cost per token."))
    for cid, rows in compared.items():
        cell = cells[cid]
        paybacks = engine_paybacks(results, cell, rows)
        table = [[row["engine"], row.get("engine_version") or "–", fnum(row["max_rps"], 2),
                  fnum(row.get("output_tokens_per_s"), 1), fnum(row["p90_s"], 3), fnum(row.get("ttft_p90_s"), 3),
                  money(row["usd_per_1k_tokens"]), paybacks.get(row["engine"], "–"), served_text(row)]
                 for row in rows]
        report.add(Table(["engine", "version", "max sustainable req/s", "output tokens/s", "p90 latency (s)",
                          "TTFT p90 (s)", "cost per 1K tokens", "break-even (requests)", "served / priced"], table,
                         f"{cell.model}, {label(cell.method)} ({cell.task}), cell {cid}."))
        commands = [f"{row['engine']}: `{row['engine_command']}`" for row in rows if row.get("engine_command")]
        if commands:
            report.add(Para("Started as: " + "; ".join(commands) + "."))


def server_version(row: dict[str, Any]) -> str:
    """The version that was measured: 'vllm 0.11.0', 'tunebench 0.1.0' ('–' for a server not started here)."""
    version = row.get("engine_version")
    if not version:
        return "–"
    return version if version.startswith("tunebench") else f"{row['engine']} {version}"


def served_text(row: dict[str, Any]) -> str:
    served = row.get("served")
    what = {"adapters": f"{row.get('adapters') or '?'} LoRA adapter(s), unmerged", "merged": "merged weights",
            "base": "base weights"}.get(served or "", "tunebench serve" if row.get("engine") in ("batched", "naive")
                                        else "external server")
    return f"{what}; {row.get('pricing') or 'per hour'}"


def entry_of(results: StudyResults, cell: Any) -> Entry | None:
    return next((e for e in results.entries(cell.task) if any(c.id == cell.id for c in e.cells)), None)


def engine_paybacks(results: StudyResults, cell: Any, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per engine, requests until the cell's training pays back against each prompting method of its model."""
    from tunebench.study.report.breakeven import tokens_of

    if cell.method not in FINE_TUNED:
        return {}
    entry = entry_of(results, cell)
    training = entry.cost("train", "usd") if entry else None
    tuned_tokens = tokens_of(entry) if entry else None
    if training is None or tuned_tokens is None:
        return {}
    chosen = by_model_method(results, cell.task)
    model = results.row_of(cell.model, cell.task)
    bases = [(m, tokens_of(chosen[(model, m)][0])) for m in PROMPTING if (model, m) in chosen]
    out = {}
    for row in rows:
        if not row.get("usd_per_1k_tokens"):
            continue
        price = be.TokenPrice(row["usd_per_1k_tokens"], row["engine"])
        texts = []
        for method, tokens in bases:
            if tokens is None:
                continue
            p = be.payback(training, be.cost_per_1k_requests(tokens, price),
                           be.cost_per_1k_requests(tuned_tokens, price))
            texts.append(f"{count(p.requests) if p.requests else 'never'} (vs {label(method)})")
        if texts:
            out[row["engine"]] = "; ".join(texts)
    return out
