"""Pillar 4, break-even: cost per 1K requests of each method and the requests after which training pays back."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    fnum,
    label,
    money,
    slug,
)
from tunebench.study.report.multilora import options_section
from tunebench.study.report.verdict import Comparison, compare
from tunebench.study.results import (
    FINE_TUNED,
    METHOD_ORDER,
    METRIC_LABEL,
    PROMPTING,
    Entry,
    StudyResults,
    Value,
    fmt,
    primary_of,
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
    source: str = "tokens × cost per token"   # or what the method's own load test measured


@dataclass
class ModelBreakEven:
    """One model's methods on one task: their costs, and whether fine-tuning is better at all."""

    task: str
    model: str
    rows: list[BreakEvenRow]
    price: be.TokenPrice
    comparisons: dict[tuple[str, str], Comparison | None] = field(default_factory=dict)  # (tuned, base)
    verdict: str = ""


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


def model_breakevens(results: StudyResults, task: str) -> list[ModelBreakEven]:
    """Every model of the task with a fine-tuned and a prompting cell: costs per method and the verdict."""
    chosen = by_model_method(results, task)
    out = []
    for model in results.models(task):
        present = [m for m in METHOD_ORDER if (model, m) in chosen]
        if not any(m in FINE_TUNED for m in present) or not any(m in PROMPTING for m in present):
            continue
        price = token_price(results, task, model)
        rows = [breakeven_row(results, task, model, m, chosen[(model, m)][0], price) for m in present]
        mb = ModelBreakEven(task, model, rows, price)
        for tuned in (r for r in rows if r.method in FINE_TUNED):
            for base in (r for r in rows if r.method in PROMPTING):
                mb.comparisons[(tuned.method, base.method)] = compare(results, task, tuned.entry, base.entry)
        mb.verdict = verdict_line(mb)
        out.append(mb)
    return out


def best(rows: list[BreakEvenRow], task: str) -> BreakEvenRow | None:
    if not rows:
        return None
    primary = primary_of(task, rows[0].entry)
    scored = [r for r in rows if r.entry.value(primary) is not None]
    return max(scored, key=lambda r: r.entry.value(primary).value) if scored else None  # type: ignore[union-attr]


def verdict_line(mb: ModelBreakEven) -> str:
    """One line: is the best fine-tuned method significantly better than the best prompting one, and so does
    the break-even apply."""
    tuned = best([r for r in mb.rows if r.method in FINE_TUNED], mb.task)
    base = best([r for r in mb.rows if r.method in PROMPTING], mb.task)
    if tuned is None or base is None:
        return ""
    c = mb.comparisons.get((tuned.method, base.method))
    who = f"{mb.model}: {label(tuned.method)} vs {label(base.method)} (the best prompting method)"
    if c is None:
        return (f"**Verdict** ({who}): no per-example scores to compare; the break-even below assumes "
                "fine-tuning is at least as good.")
    primary = primary_of(mb.task, tuned.entry)
    unit = "percentage points" if primary == "accuracy" else METRIC_LABEL[primary]
    diff = f"{c.difference:+.1f} {unit} [{c.low:+.1f}, {c.high:+.1f}] (paired bootstrap, n={c.n})"
    if not c.better:
        how = "significantly worse than" if c.worse else "not significantly better than"
        return (f"**Verdict:** {mb.model}: {label(tuned.method)} is {how} {label(base.method)} at this n: {diff}; "
                "the break-even does not apply.")
    payback = (be.payback(tuned.training_usd, base.per_1k, tuned.per_1k)
               if tuned.per_1k and base.per_1k and tuned.training_usd is not None else None)
    pays = ("its cost to train or serve is unknown" if payback is None else
            "but its requests are not cheaper, so training never pays back" if payback.requests is None else
            f"pays back after {count(payback.requests)} requests")
    return (f"**Verdict:** {mb.model}: fine-tuning ({label(tuned.method)}) is significantly better than "
            f"{label(base.method)}: {diff}; {pays}.")


def breakeven_section(results: StudyResults, report: Report, plots_dir: Path) -> None:
    report.add(Heading("4. Break-even: when does fine-tuning pay for itself?"))
    report.add(Para("Cost per request: measured by each method's own load test where the study ran one (price "
                    "per hour ÷ the sustainable requests/s at the SLO, served with the prompts it was evaluated "
                    "on; a fine-tuned model merged, as it would be deployed), else (prompt tokens + output "
                    "tokens) × the serving cost per token, with token counts measured on the evaluated prompts. "
                    "Fine-tuning pays back after training cost ÷ (cost per request of prompting − cost per "
                    "request of the fine-tuned model) requests, and only where it is significantly better than "
                    "that prompting method (paired bootstrap of the per-example difference, 95%)."))
    any_rows = False
    for task in results.tasks():
        for mb in model_breakevens(results, task):
            any_rows = True
            breakeven_table(mb, report, plots_dir)
    if not any_rows:
        report.add(Para("Needs a fine-tuned cell and a prompting cell of the same model and task."))
    options_section(results, report)  # multi-LoRA and hosted baselines (report/multilora.py)


def measured_cost(results: StudyResults, task: str, model: str, method: str, entry: Entry) -> dict | None:
    """The method's own load test: the entry's cells first, else another cell of the same model and method."""
    mine = {c.id for c in entry.cells}
    same = {c.id for c in results.cells if c.task == task and c.method == method and results.row_of(c.model, task)
            == model}
    rows = [r for r in results.inference if r["cell_id"] in same and r.get("usd_per_1k_requests")]
    rows.sort(key=lambda r: (r["cell_id"] not in mine, r["engine"] != "batched", r["usd_per_1k_requests"]))
    return rows[0] if rows else None


def breakeven_row(results: StudyResults, task: str, model: str, method: str, entry: Entry,
                  price: be.TokenPrice) -> BreakEvenRow:
    tokens = tokens_of(entry)
    measured = measured_cost(results, task, model, method, entry)
    if measured is not None:
        source = (f"load test: {measured['engine']} server, {fnum(measured['max_rps'], 2)} req/s sustained, "
                  f"${measured['price_per_hour']:.3f}/h ({measured['instance']})")
        return BreakEvenRow(model, method, entry, tokens, be.Interval.exact(measured["usd_per_1k_requests"]),
                            entry.cost("train", "usd"), source)
    per_1k = be.cost_per_1k_requests(tokens, price) if tokens is not None else None
    tried = any(r["cell_id"] in {c.id for c in entry.cells} for r in results.inference)
    source = ("tokens × cost per token (its load test sustained none of the rates tried: it costs more)"
              if tried else "tokens × cost per token")
    return BreakEvenRow(model, method, entry, tokens, per_1k, entry.cost("train", "usd"), source)


def interval_text(i: be.Interval | None, unit: str = "") -> str:
    if i is None:
        return "–"
    if unit == "$":
        return f"{money(i.value)} [{money(i.low)}, {money(i.high)}]"
    return f"{i.value:,.1f} [{i.low:,.1f}, {i.high:,.1f}]"


def breakeven_table(mb: ModelBreakEven, report: Report, plots_dir: Path) -> None:
    task, model, rows, price = mb.task, mb.model, mb.rows, mb.price
    primary = primary_of(task, rows[0].entry)
    prompting = [r for r in rows if r.method in PROMPTING and r.per_1k is not None]
    table_rows, headline_rows, curves = [], [], {}
    for row in rows:
        n = row.entry.value("prompt_tokens_mean")
        paybacks, short_paybacks = [], []
        for base in prompting:
            if row.method in FINE_TUNED and row.per_1k is not None and row.training_usd is not None:
                c = mb.comparisons.get((row.method, base.method))
                if c is not None and not c.better:
                    paybacks.append(f"vs {label(base.method)}: does not apply (not significantly better)")
                    short_paybacks.append(f"n/a (vs {label(base.method)})")
                    continue
                p = be.payback(row.training_usd, base.per_1k, row.per_1k)
                paybacks.append(f"vs {label(base.method)}: {payback_text(p)}")
                short_paybacks.append(f"{count(p.requests)} (vs {label(base.method)})")
        table_rows.append([label(row.method), fmt(row.entry.value(primary), primary),
                           interval_text(row.tokens) + (f" n={n.n}" if n and n.n else ""),
                           interval_text(row.per_1k, "$"), money(row.training_usd),
                           "; ".join(paybacks) or "–", row.source])
        headline_rows.append([model, label(row.method), fmt(row.entry.value(primary), primary),
                              money(row.per_1k.value) if row.per_1k else "–", money(row.training_usd),
                              "; ".join(short_paybacks) or "–"])
        if row.per_1k is not None:
            curves[label(row.method)] = (row.training_usd or 0.0, row.per_1k.value / 1000)
    report.add(Heading(f"{task.capitalize()}, {model}", 3))
    if mb.verdict:
        report.add(Para(mb.verdict))
        report.verdicts.append(mb.verdict.replace("**", ""))
    report.add(Table(["method", METRIC_LABEL[primary], "tokens per request (prompt + output)", "cost per 1K requests",
                      "cost to train", "requests to pay back training", "priced by"], table_rows,
                     f"Serving cost per token, where no load test measured a method: "
                     f"{money(price.usd_per_1k_tokens)} per 1K tokens, {price.source}."))
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
