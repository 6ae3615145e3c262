"""Pillar 4, break-even: cost per 1K requests of each method and the requests after which training pays back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunebench.study import breakeven as be
from tunebench.study import plots
from tunebench.study.report.document import (
    Figure,
    Heading,
    Para,
    Report,
    Table,
    by_model_method,
    count,
    label,
    money,
    slug,
)
from tunebench.study.results import (
    FINE_TUNED,
    METHOD_ORDER,
    METRIC_LABEL,
    PRIMARY,
    PROMPTING,
    Entry,
    StudyResults,
    Value,
    fmt,
)

# When a study has no load test, the serving cost per token is estimated from the evaluation's measured token
# throughput; when even that is missing, from this stated throughput.
FALLBACK_TOKENS_PER_SECOND = 1000.0
FALLBACK_INSTANCE = "cpu-2core"


@dataclass
class BreakEvenRow:
    model: str
    method: str
    entry: Entry
    tokens: be.Interval | None
    per_1k: be.Interval | None
    training_usd: float | None


def token_price(results: StudyResults, task: str, model: str) -> be.TokenPrice:
    """The serving cost per token: the load test's, else the evaluation's measured throughput at its price."""
    cells = {c.id: c for c in results.cells}
    measured = [row for row in results.inference if row.get("usd_per_1k_tokens")
                and (c := cells.get(row["cell_id"])) is not None and results.row_of(c.model, task) == model
                and c.task == task]
    if measured:
        best = min(measured, key=lambda r: r["usd_per_1k_tokens"])
        return be.TokenPrice(best["usd_per_1k_tokens"], f"measured by the load test ({best['engine']} server, "
                             f"{best['instance']})")
    evals = [c.costs["eval"] for c in results.cells if results.row_of(c.model, c.task) == model and "eval" in c.costs
             and c.costs["eval"].get("tokens_per_second") and c.costs["eval"].get("price_per_hour")]
    if evals:
        tokens = sum(e["tokens"] or 0 for e in evals)
        seconds = sum((e["tokens"] or 0) / e["tokens_per_second"] for e in evals)
        price = evals[0]
        tps = tokens / seconds if seconds else FALLBACK_TOKENS_PER_SECOND
        return be.TokenPrice(be.token_price_from_throughput(price["price_per_hour"], tps),
                             f"assumed: {price['instance']} (${price['price_per_hour']:.3f}/h) serving at "
                             f"{tps:,.0f} tokens/s, the throughput measured while evaluating {model} on "
                             f"{price['device'] or 'this device'} (batched offline evaluation; a load test gives "
                             "the serving number)")
    from tunebench.cost import lookup

    price = lookup(FALLBACK_INSTANCE)
    return be.TokenPrice(be.token_price_from_throughput(price.price_per_hour, FALLBACK_TOKENS_PER_SECOND),
                         f"assumed: {price.name} (${price.price_per_hour:.3f}/h) at {FALLBACK_TOKENS_PER_SECOND:,.0f} "
                         "tokens/s (no measurement in this study)")


def tokens_of(entry: Entry) -> be.Interval | None:
    prompt, output = entry.value("prompt_tokens_mean"), entry.value("output_tokens_mean")
    if prompt is None:
        return None

    def interval(v: Value | None) -> be.Interval:
        if v is None:
            return be.Interval.exact(0.0)
        spread = v.std or 0.0
        return be.Interval(v.value, v.low if v.low is not None else v.value - spread,
                           v.high if v.high is not None else v.value + spread)

    return interval(prompt) + interval(output)


def breakeven_section(results: StudyResults, report: Report, plots_dir: Path) -> None:
    report.add(Heading("4. Break-even: when does fine-tuning pay for itself?"))
    report.add(Para("Cost per request = (prompt tokens + output tokens) × the serving cost per token, with token "
                    "counts measured on the evaluated prompts (mean, 95% interval, n). Fine-tuning pays back after "
                    "training cost ÷ (cost per request of prompting − cost per request of the fine-tuned model) "
                    "requests; the range comes from the token-count intervals."))
    any_rows = False
    for task in results.tasks():
        chosen = by_model_method(results, task)
        for model in results.models(task):
            present = [m for m in METHOD_ORDER if (model, m) in chosen]
            if not any(m in FINE_TUNED for m in present):
                continue
            any_rows = True
            price = token_price(results, task, model)
            rows = [breakeven_row(model, m, chosen[(model, m)][0], price) for m in present]
            breakeven_table(task, model, rows, price, report, plots_dir)
    if not any_rows:
        report.add(Para("Needs a fine-tuned cell and a prompting cell of the same model and task."))


def breakeven_row(model: str, method: str, entry: Entry, price: be.TokenPrice) -> BreakEvenRow:
    tokens = tokens_of(entry)
    per_1k = be.cost_per_1k_requests(tokens, price) if tokens is not None else None
    return BreakEvenRow(model, method, entry, tokens, per_1k, entry.cost("train", "usd"))


def interval_text(i: be.Interval | None, unit: str = "") -> str:
    if i is None:
        return "–"
    if unit == "$":
        return f"{money(i.value)} [{money(i.low)}, {money(i.high)}]"
    return f"{i.value:,.1f} [{i.low:,.1f}, {i.high:,.1f}]"


def breakeven_table(task: str, model: str, rows: list[BreakEvenRow], price: be.TokenPrice, report: Report,
                    plots_dir: Path) -> None:
    primary = PRIMARY[task]
    prompting = [r for r in rows if r.method in PROMPTING and r.per_1k is not None]
    table_rows, headline_rows, curves = [], [], {}
    for row in rows:
        n = row.entry.value("prompt_tokens_mean")
        paybacks, short_paybacks = [], []
        for base in prompting:
            if row.method in FINE_TUNED and row.per_1k is not None and row.training_usd is not None:
                p = be.payback(row.training_usd, base.per_1k, row.per_1k)
                paybacks.append(f"vs {label(base.method)}: {payback_text(p)}")
                short_paybacks.append(f"{count(p.requests)} (vs {label(base.method)})")
        table_rows.append([label(row.method), fmt(row.entry.value(primary), primary),
                           interval_text(row.tokens) + (f" n={n.n}" if n and n.n else ""),
                           interval_text(row.per_1k, "$"), money(row.training_usd), "; ".join(paybacks) or "–"])
        headline_rows.append([model, label(row.method), fmt(row.entry.value(primary), primary),
                              money(row.per_1k.value) if row.per_1k else "–", money(row.training_usd),
                              "; ".join(short_paybacks) or "–"])
        if row.per_1k is not None:
            curves[label(row.method)] = (row.training_usd or 0.0, row.per_1k.value / 1000)
    report.add(Heading(f"{task.capitalize()}, {model}", 3),
               Table(["method", METRIC_LABEL[primary], "tokens per request (prompt + output)", "cost per 1K requests",
                      "cost to train", "requests to pay back training"], table_rows,
                     f"Serving cost per token: {money(price.usd_per_1k_tokens)} per 1K tokens, {price.source}."))
    report.headline.append(Table(["model", "method", METRIC_LABEL[primary], "cost per 1K requests", "cost to train",
                                  "pays back after (requests)"], headline_rows, f"{task}: cost and break-even"))
    horizon = max([*payback_horizon(rows, prompting), 1e6])
    path = plots.cumulative_cost(plots_dir / f"breakeven-{task}-{slug(model)}.png", curves,
                                 title=f"{task}, {model}: total cost vs requests", horizon=horizon)
    report.add(Figure(path, "Training cost plus serving cost; where the fine-tuned line crosses a prompting line, "
                            "training has paid for itself."))


def payback_horizon(rows: list[BreakEvenRow], prompting: list[BreakEvenRow]) -> list[float]:
    out = []
    for row in rows:
        for base in prompting:
            if row.method in FINE_TUNED and row.per_1k and row.training_usd is not None and base.per_1k:
                p = be.payback(row.training_usd, base.per_1k, row.per_1k)
                if p.requests:
                    out.append(p.requests * 10)
    return out


def payback_text(p: be.Payback) -> str:
    if p.requests is None:
        return "never (its requests are not cheaper)"
    high = count(p.high) if p.high is not None else "never"
    return f"{count(p.requests)} [{count(p.low)}, {high}] requests; saves {money(p.saving_per_1m.value)} per 1M"
