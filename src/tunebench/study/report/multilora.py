"""Break-even options (issue 22): multi-LoRA serving against merged deployments, and hosted baselines.

Multi-LoRA: serving N fine-tuned adapters unmerged on one base (as vLLM and SGLang do, and tunebench serve
with several --adapter) lets the N share one pool of servers, at the unmerged-adapter throughput measured on
the engine that serves them; merging gives each its own deployment at the base model's throughput (a merged
LoRA has the base's shapes), at least one server each. Both are priced at the load test's hourly price.

Hosted baselines: a zero/few-shot cell evaluated through `model.endpoint` costs what the API billed per
request; a local fine-tuned model pays back its training once its cheaper requests make up the difference.
"""

from __future__ import annotations

from typing import Any

from tunebench.study import breakeven as be
from tunebench.study.report.document import Heading, Para, Report, Table, by_model_method, count, label, money
from tunebench.study.results import FINE_TUNED, METRIC_LABEL, StudyResults, fmt

ADAPTER_COUNTS = (1, 2, 4, 8, 16)
MERGED_LIKE = ("merged", "base")


def options_section(results: StudyResults, report: Report) -> None:
    multi_lora(results, report)
    hosted_baselines(results, report)


def measured_pairs(results: StudyResults) -> list[tuple[str, str, str, dict[str, Any], dict[str, Any]]]:
    """(task, model row, engine, unmerged-adapters row, merged-or-base row) measured on the same engine."""
    cells = {c.id: c for c in results.cells}
    rows = [(cells[r["cell_id"]], r) for r in results.inference if r["cell_id"] in cells and r.get("max_rps")]
    pairs = []
    seen = set()
    for cell, lora in rows:
        if lora.get("served") != "adapters":
            continue
        model = results.row_of(cell.model, cell.task)
        key = (cell.task, model, lora["engine"])
        merged = next((r for c, r in rows if r["engine"] == lora["engine"] and r.get("served") in MERGED_LIKE
                       and c.task == cell.task and results.row_of(c.model, c.task) == model), None)
        if merged is not None and key not in seen and lora.get("price_per_hour"):
            seen.add(key)
            pairs.append((*key, lora, merged))
    return pairs


def multi_lora(results: StudyResults, report: Report) -> None:
    pairs = measured_pairs(results)
    if not pairs:
        return
    report.add(Heading("Multi-LoRA: N adapters on one base, or N merged deployments", 3),
               Para("Serving N fine-tuned variants: unmerged on one base, every server holds every adapter and "
                    "the N share one pool sized at the **unmerged-adapter** max sustainable rate measured on that "
                    "engine; merged, each variant is its own deployment (at least one server) at the base "
                    "model's rate. Light traffic: in all, what one merged server sustains; heavy: that much for "
                    "each of the N."))
    for task, model, engine, lora, merged in pairs:
        price, r_lora, r_merged = lora["price_per_hour"], lora["max_rps"], merged["max_rps"]
        rows = []
        for n in ADAPTER_COUNTS:
            cells = [str(n)]
            for total in (r_merged, n * r_merged):
                m = be.merged_deployments(n, total, r_merged, price)
                u = be.multi_lora_deployment(total, r_lora, price)
                cells += [f"{total:,.2f}", f"{m.replicas} × {money(price)}/h = {money(m.usd_per_hour)}/h "
                          f"({money(m.usd_per_1k_requests(total))} per 1K req)",
                          f"{u.replicas} × {money(price)}/h = {money(u.usd_per_hour)}/h "
                          f"({money(u.usd_per_1k_requests(total))} per 1K req)"]
            rows.append(cells)
        report.add(Table(["adapters N", "light: req/s in all", "N merged", "one multi-LoRA pool", "heavy: req/s in all",
                          "N merged", "one multi-LoRA pool"], rows,
                         f"{task}, {model} on {engine}: unmerged adapters sustain {r_lora:g} req/s, the merged/base "
                         f"model {r_merged:g} req/s ({r_lora / r_merged:.0%}); {lora.get('instance') or 'server'} "
                         f"at {money(price)}/h."))


def hosted_baselines(results: StudyResults, report: Report) -> None:
    """Hosted prompting cells beside the local fine-tuned ones: quality, billed cost, pay-back."""
    from tunebench.study.report.breakeven import breakeven_row, token_price

    blocks = []
    for task in results.tasks():
        chosen = by_model_method(results, task)
        hosted = [(model, method, entry) for (model, method), (entry, _) in chosen.items()
                  if model.endswith(" (hosted)") and entry.value("prompt_tokens_mean") is not None]
        tuned = [(model, method, entry) for (model, method), (entry, _) in chosen.items()
                 if method in FINE_TUNED and not model.endswith(" (hosted)")]
        primary = results.primary(task)
        for model, method, entry in hosted:
            billed = billed_per_1k(entry)
            rows = [[f"{model}, {label(method)}", fmt(entry.value(primary), primary), money(billed), "–", "–"]]
            for local, tmethod, tentry in tuned:
                local_row = breakeven_row(results, task, local, tmethod, tentry, token_price(results, task, local))
                per_1k = local_row.per_1k.value if local_row.per_1k else None
                pays = "–"
                if billed is not None and per_1k is not None and local_row.training_usd is not None:
                    p = be.payback(local_row.training_usd, be.Interval.exact(billed), be.Interval.exact(per_1k))
                    pays = count(p.requests) if p.requests else "never (not cheaper per request)"
                rows.append([f"{local}, {label(tmethod)}", fmt(tentry.value(primary), primary), money(per_1k),
                             money(local_row.training_usd), pays])
            blocks.append(Table(["model", METRIC_LABEL[primary], "cost per 1K requests", "cost to train",
                                 "requests to pay back vs the hosted model"], rows,
                                f"{task}: the hosted model at what its API billed (usage × per-token prices), "
                                "the local ones at their serving cost per token."))
    if blocks:
        report.add(Heading("A hosted model as the baseline", 3), *blocks)


def billed_per_1k(entry: Any) -> float | None:
    """USD per 1K requests the API billed during evaluation: the eval stage's cost over its examples."""
    usd = entry.cost("eval", "usd")
    n = entry.value("accuracy") or entry.value("rouge1") or entry.value("prompt_tokens_mean")
    return usd / n.n * 1000 if usd is not None and n is not None and n.n else None
