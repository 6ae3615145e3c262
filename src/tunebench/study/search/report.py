"""The report's search section: the quality-vs-cost front, best-so-far against trials and $, the chosen
configurations with their intervals, and each parameter's importance (Optuna's evaluator).

Every number comes from results.db (a trial is a cell) and the journal (its state and parameters). The
front is built from every trial's evaluation; with pruning (one objective), pruned trials are drawn at what
they cost and evaluated where they stopped, and marked, so the plot says which points are cut short.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.config.search import QUALITY_METRICS
from tunebench.study.search.fronts import (
    add_epoch_front,
    add_inference_front,
    epoch_points,
    front_basis,
    inference_costs,
    inference_searched,
)


@dataclass
class TrialPoint:
    number: int
    state: str
    cell_id: str
    params: dict[str, Any]
    quality: float | None
    ci: tuple[float | None, float | None]
    train_usd: float | None
    usd: float              # training and evaluation
    inference_usd: float | None = None   # $ per 1K output tokens its load test measured (the inference front)


def quality_metric(config: dict[str, Any], task: str) -> tuple[str, str]:
    for o in (config.get("search") or {}).get("objectives") or []:
        if o.get("metric") in QUALITY_METRICS:
            return o["metric"], o.get("direction") or QUALITY_METRICS[o["metric"]]
    return ("rouge1" if task == "summarization" else "accuracy"), "maximize"


def trial_points(store: Any, osearch: Any, metric: str) -> list[TrialPoint]:
    points = []
    for t in osearch.get_trials(deepcopy=False):
        cid = t.user_attrs.get("cell_id")
        if cid is None or t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        stage = "train" if metric == "eval_loss" else "eval"
        row = store.rows("SELECT value, ci_low, ci_high FROM metrics WHERE cell_id = ? AND stage = ? AND name = ?",
                         (cid, stage, metric))
        costs = {r["stage"]: r["usd"] for r in store.rows("SELECT stage, usd FROM costs WHERE cell_id = ?", (cid,))}
        points.append(TrialPoint(t.number, t.state.name.lower(), cid, dict(t.params),
                                 row[0]["value"] if row else None,
                                 (row[0]["ci_low"], row[0]["ci_high"]) if row else (None, None),
                                 costs.get("train"), sum(v or 0.0 for v in costs.values())))
    return points


def front(points: list[TrialPoint], maximize: bool) -> list[TrialPoint]:
    """Non-dominated points: no other is at least as good in quality and as cheap, and better in one."""
    def better(a: TrialPoint, b: TrialPoint) -> bool:
        qa, qb = (a.quality, b.quality) if maximize else (-a.quality, -b.quality)   # type: ignore[operator]
        return qa >= qb and a.train_usd <= b.train_usd and (qa > qb or a.train_usd < b.train_usd)  # type: ignore

    ok = [p for p in points if p.quality is not None and p.train_usd is not None]
    return sorted([p for p in ok if not any(better(o, p) for o in ok)], key=lambda p: p.train_usd or 0.0)


def pareto_plot(path: Path, points: list[TrialPoint], chosen: list[TrialPoint], metric: str) -> Path:
    from tunebench.study.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        xs = [p.train_usd for p in points if p.state == state and p.quality is not None and p.train_usd is not None]
        ys = [p.quality for p in points if p.state == state and p.quality is not None and p.train_usd is not None]
        if xs:
            ax.scatter(xs, ys, marker=marker, label=f"{state} trials", alpha=0.7)
    if chosen:
        ax.plot([p.train_usd for p in chosen], [p.quality for p in chosen], "-", color="black", label="front")
    ax.set_xlabel("cost to train ($)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against cost to train")
    ax.legend()
    return _save(fig, path)


def progress_plot(path: Path, points: list[TrialPoint], metric: str, maximize: bool) -> Path:
    from tunebench.study.plots import _pyplot, _save

    plt = _pyplot()
    fig, (by_trial, by_usd) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    best, spent, xs, ys, usd = None, 0.0, [], [], []
    for p in sorted(points, key=lambda p: p.number):
        spent += p.usd
        if p.quality is not None and p.state == "complete":
            best = p.quality if best is None else (max if maximize else min)(best, p.quality)
        if best is not None:
            xs.append(p.number)
            ys.append(best)
            usd.append(spent)
    by_trial.step(xs, ys, where="post")
    by_trial.set_xlabel("trial")
    by_trial.set_ylabel(f"best {metric} so far")
    by_usd.step(usd, ys, where="post")
    by_usd.set_xlabel("$ spent (training and evaluation)")
    pruned = [p.number for p in points if p.state == "pruned"]
    for n in pruned:
        by_trial.axvline(n, color="grey", alpha=0.3, linestyle=":")
    fig.suptitle("best so far" + (" (dotted: pruned trials)" if pruned else ""))
    return _save(fig, path)


def importances(osearch: Any) -> dict[str, float]:
    import warnings

    import optuna

    complete = [t for t in osearch.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    # the default evaluator (PED-ANOVA in Optuna 5) ranks what reaches low values: flip a maximized objective
    sign = -1.0 if osearch.directions[0].name == "MAXIMIZE" else 1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(osearch, target=lambda t: sign * t.values[0])
    except (ValueError, RuntimeError):   # a parameter that never varied, too few distinct trials
        return {}


def add_search_section(report: Any, study_dir: Path, plots_dir: Path) -> None:
    """Append the search section to `report` when the study directory holds a search journal."""
    import json

    from tunebench.study.report import Figure, Heading, Para, Table
    from tunebench.study.search.loop import load_search
    from tunebench.study.store import Store

    with Store.open_readonly(study_dir) as store:
        row = store.rows("SELECT name, config FROM study")
        if not row:
            return
        config = json.loads(row[0]["config"])
        osearch = load_search(study_dir, row[0]["name"])
        if osearch is None:
            return
        task = ((config.get("defaults") or {}).get("data") or {}).get("task", "classification")
        metric, direction = quality_metric(config, task)
        points = trial_points(store, osearch, metric)
        several = len(osearch.directions) > 1
        epochs = [] if several else epoch_points(store, osearch, config, Path(study_dir))
        served = inference_costs(store, [p.cell_id for p in points]) if inference_searched(config) else None
    maximize = direction == "maximize"
    states: dict[str, int] = {}
    for t in osearch.get_trials(deepcopy=False):
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    search = config.get("search") or {}
    pruner = search.get("pruner") or "none"
    pruner = pruner.get("name", "none") if isinstance(pruner, dict) else pruner
    report.add(Heading("Search"), Para(
        f"Sampler **{search.get('sampler', 'tpe')}**, pruner **{pruner}**, objectives "
        + ", ".join(f"{d.name.lower()} `{o.get('metric')}`" for d, o in zip(osearch.directions,
                                                                          search.get("objectives") or [{}],
                                                                          strict=False))
        + f"; trials: {', '.join(f'{n} {s}' for s, n in sorted(states.items()))}; "
        f"spent ${sum(p.usd for p in points):.4f}. "
        + front_basis(several, epochs, len(points))))
    add_epoch_front(report, epochs, config, plots_dir)
    chosen = front(points, maximize)
    if points:
        plots_dir.mkdir(parents=True, exist_ok=True)
        report.add(Figure(pareto_plot(plots_dir / "search-front.png", points, chosen, metric),
                          f"{metric} of every trial's final evaluation against cost to train (pruned trials, ×, "
                          "evaluated where they stopped); the line joins the non-dominated ones"))
        report.add(Figure(progress_plot(plots_dir / "search-progress.png", points, metric, maximize),
                          "best so far against trials and against $ spent"))
    rows = []
    for p in chosen:
        ci = f" [{p.ci[0]:.3g}, {p.ci[1]:.3g}]" if p.ci[0] is not None and p.ci[1] is not None else ""
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.params.items())
        rows.append([str(p.number), p.state, f"{p.quality:.4g}{ci}", f"${p.train_usd:.4f}", params, p.cell_id])
    if rows:
        report.add(Table(["trial", "state", metric + " [95% CI]", "train $", "parameters", "cell"], rows,
                         "the chosen configurations: the quality-vs-cost front of the final evaluations"))
    if served is not None:
        add_inference_front(report, points, served, metric, maximize, plots_dir)
    weights = importances(osearch)
    if weights:
        report.add(Table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in weights.items()],
                         "parameter importances for the first objective (optuna.importance, its default evaluator)"))
