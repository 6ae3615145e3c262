"""Pillar 1, quality: per task zero-shot / few-shot / fine-tuned per model (Tables 1 and 3), sample efficiency
(Table 2, with a plot), model comparison (Table 4), LoRA ablation (table, r × dropout heatmap, metric vs
epochs)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tunebench.study import plots
from tunebench.study.report.breakeven import model_breakevens
from tunebench.study.report.document import (
    INTERVAL_NOTE,
    INTERVALS,
    Figure,
    Heading,
    Para,
    Report,
    Table,
    by_model_method,
    config_note,
    duration,
    label,
    methods_in,
    money,
    slug,
)
from tunebench.study.results import (
    FINE_TUNED,
    METRIC_LABEL,
    PROMPTING,
    SEED_FIELDS,
    CellResult,
    Entry,
    StudyResults,
    Value,
    fmt,
    scale_of,
)


def quality_section(results: StudyResults, report: Report, plots_dir: Path) -> None:
    report.add(Heading("1. Quality"))
    for task in results.tasks():
        chosen = by_model_method(results, task)
        if not chosen:
            report.add(Heading(f"{task}", 3), Para("No finished evaluations yet."))
            continue
        primary = results.primary(task)
        report.add(Heading(f"{task.capitalize()}: zero-shot vs few-shot vs fine-tuned", 3))
        for mb in model_breakevens(results, task):   # lead with the verdict: better at all, at this n?
            if mb.verdict:
                report.add(Para(mb.verdict))
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
            values = [fmt(entry.value(name), name) for name in [primary, *results.secondary(task)]]
            detail_rows.append([entry.first.model, label(method), *values, config_note(entry, of), entry.ids])
        report.add(Table(["model", "method", *[METRIC_LABEL[n] for n in [primary, *results.secondary(task)]], "setting",
                          "cell"], detail_rows, f"Every metric of each row above. {INTERVAL_NOTE}"))
        sample_efficiency(results, task, report, plots_dir)
        model_comparison(results, task, chosen, report)
        lora_ablation(results, task, report, plots_dir)
        epochs_curve(results, task, report, plots_dir)


def quality_plot(results: StudyResults, task: str, chosen: dict[tuple[str, str], tuple[Entry, int]],
                 methods: list[str], plots_dir: Path) -> Path:
    primary, scale = results.primary(task), scale_of(results.primary(task))
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
    primary = results.primary(task)
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
        value = entry.value(results.primary(task))
        if model in models and method in PROMPTING and value is not None:
            out[f"{model} {label(method)}"] = value.value * scale_of(results.primary(task))
    return out


def model_comparison(results: StudyResults, task: str, chosen: dict[tuple[str, str], tuple[Entry, int]],
                     report: Report) -> None:
    primary = results.primary(task)
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
    primary = results.primary(task)
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
    primary, scale = results.primary(task), scale_of(results.primary(task))
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
