"""`tunebench report`: the four pillars from a study's results store, as Markdown or self-contained HTML.

    quality        per task: zero-shot / few-shot / fine-tuned per model (Tables 1 and 3), sample efficiency
                   (Table 2, with a plot), model comparison (Table 4), LoRA ablation (table, r × dropout
                   heatmap, metric vs epochs)
    time and cost  to train, per cell (Table 5)
    inference      the load tests' numbers, when the study ran them
    break-even     cost per 1K requests of each method and the requests after which training pays back

Every number carries its n and 95% interval; with several seeds, mean ± std. Plots are PNG files beside the
report; the HTML page embeds them (base64), so it is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.study import breakeven as be
from tunebench.study import plots
from tunebench.study.results import (
    FINE_TUNED,
    METHOD_LABEL,
    METHOD_ORDER,
    METRIC_LABEL,
    PRIMARY,
    PROMPTING,
    SECONDARY,
    SEED_FIELDS,
    CellResult,
    Entry,
    StudyResults,
    Value,
    fmt,
    scale_of,
)

# When a study has no load test, the serving cost per token is estimated from the evaluation's measured token
# throughput; when even that is missing, from this stated throughput.
FALLBACK_TOKENS_PER_SECOND = 1000.0
FALLBACK_INSTANCE = "cpu-2core"
INTERVALS = {  # how evaluate.metrics computes each headline metric's interval
    "accuracy": "Wilson score interval, honest at 0% and 100%",
    "rouge1": "percentile bootstrap over the examples",
}
INTERVAL_NOTE = ("Accuracy: Wilson score intervals; macro-F1 and ROUGE: percentile bootstrap over the examples, "
                 "which collapses to a point when every example scores the same (e.g. macro-F1 at 100%).")


# ---------------------------------------------------------------- the document


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str  # Markdown inline: `code` and **bold** only


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


Block = Heading | Para | Table | Figure


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)
    headline: list[Table] = field(default_factory=list)   # what the terminal shows after `tunebench demo`

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def label(method: str) -> str:
    return METHOD_LABEL.get(method, method)


def money(usd: float | None) -> str:
    if usd is None:
        return "–"
    if usd == 0:
        return "$0"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    if abs(usd) >= 0.01:
        return f"${usd:.3f}"
    return f"${usd:.2g}" if abs(usd) >= 1e-5 else f"${usd:.1e}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def count(n: float | None) -> str:
    if n is None:
        return "never"
    return f"{n:,.0f}" if n < 1e6 else f"{n:.3g}"


# ---------------------------------------------------------------- choosing what to compare


def headline_entry(entries: list[Entry], task: str) -> tuple[Entry, int] | None:
    """A method's representative: the most training data, then the best primary metric (of k configs)."""
    scored = [e for e in entries if e.value(PRIMARY[task]) is not None]
    if not scored:
        return None
    most = max(e.first.train_size for e in scored)
    largest = [e for e in scored if e.first.train_size == most]
    best = max(largest, key=lambda e: e.value(PRIMARY[task]).value)  # type: ignore[union-attr]
    return best, len(largest)


def by_model_method(results: StudyResults, task: str) -> dict[tuple[str, str], tuple[Entry, int]]:
    grouped: dict[tuple[str, str], list[Entry]] = {}
    for entry in results.entries(task):
        grouped.setdefault((results.row_of(entry.first.model, task), entry.first.method), []).append(entry)
    chosen = {key: headline_entry(entries, task) for key, entries in grouped.items()}
    return {key: value for key, value in chosen.items() if value is not None}


def methods_in(keys: Any) -> list[str]:
    present = {method for _, method in keys}
    return [m for m in METHOD_ORDER if m in present]


def config_note(entry: Entry, of: int) -> str:
    c = entry.first
    parts = []
    if c.method in ("lora", "qlora"):
        parts.append(f"r={c.axes['lora_r']} α={c.axes['lora_alpha']:g} dropout={c.axes['lora_dropout']}")
    if c.method in FINE_TUNED:
        parts.append(f"{c.axes['epochs'] or 'default'} epochs")
        if c.train_examples is not None:
            parts.append(f"{c.train_examples} train examples")
    if of > 1:
        parts.append(f"best of {of} configurations")
    return "; ".join(parts)


# ---------------------------------------------------------------- quality


def quality_section(results: StudyResults, report: Report, plots_dir: Path) -> None:
    report.add(Heading("1. Quality"))
    for task in results.tasks():
        chosen = by_model_method(results, task)
        if not chosen:
            report.add(Heading(f"{task}", 3), Para("No finished evaluations yet."))
            continue
        primary = PRIMARY[task]
        report.add(Heading(f"{task.capitalize()}: zero-shot vs few-shot vs fine-tuned", 3))
        methods = methods_in(chosen)
        rows = [[model] + [fmt(chosen[(model, m)][0].value(primary), primary) if (model, m) in chosen else "–"
                           for m in methods] for model in results.models(task)]
        caption = f"{METRIC_LABEL[primary]} on the test split, 95% interval in brackets ({INTERVALS[primary]}) and n."
        table = Table(["model", *[label(m) for m in methods]], rows, caption)
        report.add(table)
        report.headline.append(Table(table.headers, rows, f"{task}: {METRIC_LABEL[primary]}"))
        report.add(Figure(quality_plot(results, task, chosen, methods, plots_dir),
                          f"{task}: {METRIC_LABEL[primary]} per model and method, 95% intervals."))
        detail_rows = []
        for (_, method), (entry, of) in chosen.items():
            values = [fmt(entry.value(name), name) for name in [primary, *SECONDARY[task]]]
            detail_rows.append([entry.first.model, label(method), *values, config_note(entry, of), entry.ids])
        report.add(Table(["model", "method", *[METRIC_LABEL[n] for n in [primary, *SECONDARY[task]]], "setting",
                          "cell"], detail_rows, f"Every metric of each row above. {INTERVAL_NOTE}"))
        sample_efficiency(results, task, report, plots_dir)
        model_comparison(results, task, chosen, report)
        lora_ablation(results, task, report, plots_dir)
        epochs_curve(results, task, report, plots_dir)


def quality_plot(results: StudyResults, task: str, chosen: dict[tuple[str, str], tuple[Entry, int]],
                 methods: list[str], plots_dir: Path) -> Path:
    primary, scale = PRIMARY[task], scale_of(PRIMARY[task])
    models = results.models(task)
    series: dict[str, list[tuple[float, float | None, float | None] | None]] = {}
    for method in methods:
        values = []
        for model in models:
            v = chosen[(model, method)][0].value(primary) if (model, method) in chosen else None
            values.append(bar_value(v, scale))
        series[label(method)] = values
    return plots.bars(plots_dir / f"quality-{task}.png", models, series, title=f"{task}: quality",
                      ylabel=METRIC_LABEL[primary])


def bar_value(v: Value | None, scale: float) -> tuple[float, float | None, float | None] | None:
    if v is None:
        return None
    if v.seeds > 1:
        return v.value * scale, (v.value - (v.std or 0)) * scale, (v.value + (v.std or 0)) * scale
    return (v.value * scale, v.low * scale if v.low is not None else None,
            v.high * scale if v.high is not None else None)


def grouped_along(entries: list[Entry], *fields: str) -> list[list[Entry]]:
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.first.without(*fields, *SEED_FIELDS), []).append(entry)
    return list(groups.values())


def series_label(entry: Entry, varying: tuple[str, ...]) -> str:
    c = entry.first
    text = f"{c.model} {label(c.method)}"
    if c.method in ("lora", "qlora") and "lora.r" not in varying:
        text += f" r={c.axes['lora_r']}"
    return text


def sample_efficiency(results: StudyResults, task: str, report: Report, plots_dir: Path) -> None:
    trained = [e for e in results.entries(task) if e.first.method in FINE_TUNED]
    # one point per training-set size (fraction 1.0 and "all data" are the same examples)
    curves = [sorted({e.first.train_size: e for e in reversed(g)}.values(), key=lambda e: e.first.train_size)
              for g in grouped_along(trained, "data.train_fraction", "data.train_count")
              if len({e.first.train_size for e in g}) > 1]
    if not curves:
        return
    primary = PRIMARY[task]
    report.add(Heading(f"{task.capitalize()}: sample efficiency", 3))
    rows, series = [], []
    for curve in curves:
        points = [(e, e.value(primary)) for e in curve]
        points = [(e, v) for e, v in points if v is not None]
        for entry, value in points:
            c = entry.first
            rows.append([c.model, label(c.method), training_set(c), examples_used(c), fmt(value, primary)])
        scale = scale_of(primary)
        series.append(plots.Series(
            series_label(curve[0], ("data.train_fraction",)), [e.first.train_size for e, _ in points],
            [v.value * scale for _, v in points], [bar_value(v, scale)[1] for _, v in points],  # type: ignore[index]
            [bar_value(v, scale)[2] for _, v in points]))  # type: ignore[index]
    report.add(Table(["model", "method", "training set", "train examples", METRIC_LABEL[primary]], rows,
                     "Metric against the number of training examples (the original's Table 2)."))
    refs = prompting_levels(results, task, {results.row_of(c[0].first.model, task) for c in curves})
    path = plots.lines(plots_dir / f"sample-efficiency-{task}.png", series, title=f"{task}: sample efficiency",
                       xlabel="training examples", ylabel=METRIC_LABEL[primary], log_x=True, references=refs)
    report.add(Figure(path, "Shaded: 95% intervals. Dashed: prompting the same base model."))


def training_set(cell: CellResult) -> str:
    """How the cell asked for its training set: a share of the training split, a count, or all of it."""
    if cell.axes["fraction"] is not None:
        return f"{cell.axes['fraction'] * 100:g}% of the training split"
    return f"train_count {cell.axes['count']}" if cell.axes["count"] is not None else "all of the training split"


def examples_used(cell: CellResult) -> str:
    """The examples the training run actually used (fewer than a train_count asked when the split is smaller)."""
    used, asked = cell.train_examples, cell.axes["count"]
    if used is None:
        return "?"
    return f"{used} of {asked} asked" if asked is not None and used < asked else str(used)


def prompting_levels(results: StudyResults, task: str, models: set[str]) -> dict[str, float]:
    out = {}
    for (model, method), (entry, _) in by_model_method(results, task).items():
        value = entry.value(PRIMARY[task])
        if model in models and method in PROMPTING and value is not None:
            out[f"{model} {label(method)}"] = value.value * scale_of(PRIMARY[task])
    return out


def model_comparison(results: StudyResults, task: str, chosen: dict[tuple[str, str], tuple[Entry, int]],
                     report: Report) -> None:
    primary = PRIMARY[task]
    if len({model for model, _ in chosen}) < 2:
        return
    ranked = sorted(chosen.items(), key=lambda kv: -(kv[1][0].value(primary).value))  # type: ignore[union-attr]
    rows = [[model, label(method), fmt(entry.value(primary), primary), duration(entry.cost("train", "wall_seconds")),
             money(entry.cost("train", "usd"))] for (model, method), (entry, _) in ranked]
    report.add(Heading(f"{task.capitalize()}: model comparison", 3),
               Table(["model", "method", METRIC_LABEL[primary], "time to train", "cost to train"], rows,
                     "Every model's best result per method, best first (the original's Table 4)."))


def lora_ablation(results: StudyResults, task: str, report: Report, plots_dir: Path) -> None:
    adapters = [e for e in results.entries(task) if e.first.method in ("lora", "qlora")]
    groups = [g for g in grouped_along(adapters, "lora.r", "lora.alpha", "lora.dropout", "training.epochs")
              if len({(e.first.axes["lora_r"], e.first.axes["lora_alpha"], e.first.axes["lora_dropout"])
                      for e in g}) > 1]
    primary = PRIMARY[task]
    for group in groups:
        c = group[0].first
        title = f"{task.capitalize()}: LoRA ablation, {c.model} {label(c.method)}"
        group = sorted(group, key=lambda e: (e.first.axes["lora_r"], e.first.axes["lora_dropout"],
                                             e.first.axes["lora_alpha"], e.first.axes["epochs"] or 0))
        rows = [[str(e.first.axes["lora_r"]), f"{e.first.axes['lora_alpha']:g}", f"{e.first.axes['lora_dropout']:g}",
                 str(e.first.axes["epochs"] or "default"), fmt(e.value(primary), primary),
                 duration(e.cost("train", "wall_seconds"))] for e in group]
        report.add(Heading(title, 3), Table(["r", "alpha", "dropout", "epochs", METRIC_LABEL[primary],
                                              "time to train"], rows, "LoRA rank, scaling and dropout."))
        report.add(Figure(ablation_heatmap(group, primary, plots_dir / f"lora-{task}-{slug(c.model)}-"
                                                                      f"{c.method}.png", title), title))


def ablation_heatmap(group: list[Entry], primary: str, path: Path, title: str) -> Path:
    epochs = max(e.first.axes["epochs"] or 0 for e in group)
    alpha = Counter(e.first.axes["lora_alpha"] for e in group).most_common(1)[0][0]
    cells = {(e.first.axes["lora_r"], e.first.axes["lora_dropout"]): e.value(primary) for e in group
             if (e.first.axes["epochs"] or 0) == epochs and e.first.axes["lora_alpha"] == alpha}
    ranks = sorted({r for r, _ in cells})
    dropouts = sorted({d for _, d in cells})
    grid = [[cells[(r, d)].value * scale_of(primary) if cells.get((r, d)) else None for d in dropouts]
            for r in ranks]
    return plots.heatmap(path, grid, [str(r) for r in ranks], [f"{d:g}" for d in dropouts],
                         title=f"{title}\n(alpha={alpha:g}, {epochs or 'default'} epochs; {METRIC_LABEL[primary]})",
                         row_label="LoRA r", column_label="LoRA dropout")


def epochs_curve(results: StudyResults, task: str, report: Report, plots_dir: Path) -> None:
    trained = [e for e in results.entries(task) if e.first.method in FINE_TUNED]
    curves = [sorted(g, key=lambda e: e.first.axes["epochs"] or 0) for g in grouped_along(trained, "training.epochs")
              if len({e.first.axes["epochs"] for e in g}) > 1]
    if not curves:
        return
    primary, scale = PRIMARY[task], scale_of(PRIMARY[task])
    rows, series = [], []
    for curve in curves:
        c = curve[0].first
        name = series_label(curve[0], ())
        if c.method in ("lora", "qlora"):
            name += f" dropout={c.axes['lora_dropout']:g}"
        points = [(e, e.value(primary)) for e in curve if e.value(primary) is not None]
        rows += [[name, str(e.first.axes["epochs"]), fmt(v, primary)] for e, v in points]
        bands = [bar_value(v, scale) for _, v in points]
        series.append(plots.Series(name, [float(e.first.axes["epochs"]) for e, _ in points],
                                   [b[0] for b in bands], [b[1] for b in bands], [b[2] for b in bands]))  # type: ignore[index]
    report.add(Heading(f"{task.capitalize()}: metric vs epochs", 3),
               Table(["configuration", "epochs", METRIC_LABEL[primary]], rows,
                     "Each epoch count is the per-epoch checkpoint of one training run."))
    path = plots.lines(plots_dir / f"epochs-{task}.png", series, title=f"{task}: {METRIC_LABEL[primary]} vs epochs",
                       xlabel="epochs", ylabel=METRIC_LABEL[primary])
    report.add(Figure(path, "Shaded: 95% intervals."))


# ---------------------------------------------------------------- time and cost to train


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


# ---------------------------------------------------------------- inference cost


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


def fnum(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


# ---------------------------------------------------------------- break-even


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


# ---------------------------------------------------------------- status and provenance


def overview(results: StudyResults, report: Report) -> None:
    statuses = Counter(stage["status"] for c in results.cells for stage in c.stages.values())
    description = results.study.get("description") or ""
    report.add(Para(f"{description}\n\n" if description else ""),
               Para(f"**{len(results.cells)} cells**; stages: " + ", ".join(f"{n} {s}" for s, n in sorted(
                   statuses.items())) + "."))
    if results.left_out:
        report.add(Para(f"{results.left_out} more cell(s) in the store are no longer in the study file and are left "
                        "out of this report (their results stay in results.db)."))
    notes = sorted({c.stages["eval"]["detail"] for c in results.cells
                    if c.stages.get("eval", {}).get("detail")})
    for note in notes:
        report.add(Para(f"Note: {note}"))
    failed = [(c.id, name, stage.get("error") or "") for c in results.cells for name, stage in c.stages.items()
              if stage["status"] == "failed"]
    if failed:
        report.add(Table(["cell", "stage", "error"], [list(f) for f in failed],
                         "Failed stages (rerun with --retry-failed after fixing the cause)."))


def provenance_section(results: StudyResults, report: Report) -> None:
    if not results.provenance:
        return
    report.add(Heading("Provenance"))
    devices = Counter(p["device"] for p in results.provenance)
    shas = Counter(p["git_sha"] or "unknown" for p in results.provenance)
    hashes = sorted({p["data_hash"] for p in results.provenance if p["data_hash"]})
    packages = results.provenance[-1]["packages"]
    report.add(Table(["what", "value"], [
        ["devices", ", ".join(f"{d} ({n} cells)" for d, n in devices.items())],
        ["git sha", ", ".join(f"{s} ({n} cells)" for s, n in shas.items())],
        ["data hashes", ", ".join(hashes) or "–"],
        ["python", results.provenance[-1]["python"] or "?"],
        ["packages", packages],
    ]))


# ---------------------------------------------------------------- building and rendering


def build_report(results: StudyResults, plots_dir: Path) -> Report:
    report = Report(title=f"tunebench study '{results.study.get('name')}'")
    overview(results, report)
    quality_section(results, report, plots_dir)
    training_section(results, report)
    inference_section(results, report)
    breakeven_section(results, report, plots_dir)
    provenance_section(results, report)
    return report


def md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report, base: Path) -> str:
    out = [f"# {report.title}", ""]
    for block in report.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            if block.text.strip():
                out += [block.text.strip(), ""]
        elif isinstance(block, Table):
            out += ["| " + " | ".join(map(md_cell, block.headers)) + " |",
                    "|" + "---|" * len(block.headers)]
            out += ["| " + " | ".join(map(md_cell, row)) + " |" for row in block.rows]
            out += ([f"\n*{block.caption}*"] if block.caption else []) + [""]
        else:
            rel = Path(block.path).resolve().relative_to(base.resolve()) if is_under(block.path, base) else block.path
            out += [f"![{block.caption}]({rel})", "", f"*{block.caption}*", ""]
    return "\n".join(out)


def is_under(path: Path, base: Path) -> bool:
    try:
        Path(path).resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


def inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
caption { caption-side: bottom; font-style: italic; text-align: left; padding-top: 0.3em; color: #555; }
figure { margin: 1em 0; } figcaption { font-style: italic; color: #555; }
img { max-width: 100%; } code { background: #f3f3f3; padding: 0 0.2em; }
"""


def to_html(report: Report) -> str:
    out = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
           f"<title>{html.escape(report.title)}</title><style>{STYLE}</style></head><body>",
           f"<h1>{html.escape(report.title)}</h1>"]
    for block in report.blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            if block.text.strip():
                out.append(f"<p>{inline_html(block.text.strip())}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
            body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
            out.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(Path(block.path).read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def study_report(study_dir: Path, plots_dir: Path) -> Report:
    """Read the study's store and build its report, writing the plots into `plots_dir`."""
    from tunebench.study.results import load_results
    from tunebench.study.store import Store

    with Store.open_readonly(Path(study_dir)) as store:
        results = load_results(store)
    report = build_report(results, plots_dir)
    from tunebench.study.search.report import add_search_section  # a search's own section (its module)

    add_search_section(report, Path(study_dir), plots_dir)
    return report


def save_report(report: Report, fmt_name: str, out: Path) -> Path:
    from tunebench.rundir import write_atomic

    write_atomic(out, to_html(report) if fmt_name == "html" else to_markdown(report, out.parent))
    return out


def write_report(study_dir: Path, fmt_name: str = "md", out: Path | None = None) -> tuple[Path, Report]:
    """Build the report of the study in `study_dir`; returns its path and the report (for the headline)."""
    out = Path(out) if out else Path(study_dir) / f"report.{fmt_name}"
    report = study_report(study_dir, out.parent / f"{out.stem}-plots")
    return save_report(report, fmt_name, out), report
