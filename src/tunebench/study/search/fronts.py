"""The fronts a search's report draws, besides the final evaluations (tunebench.study.search.report):

    per (trial, epoch)  single objective (pruned or not): each evaluated epoch checkpoint is a configuration of
                        its own (the trial's parameters with training.epochs = that epoch), cheaper than the
                        trial's last; its quality is the per-epoch validation metric training reports (Optuna's
                        intermediate values, else the checkpoint's epoch.json) and its cost the trial's
                        training $ prorated to that epoch, as a shared epoch checkpoint is (stages.link_checkpoint)
    final points        several objectives: Optuna cannot prune them, so every trial ran its full configuration
                        and the front is built from the final evaluations
    inference cost      when model.name or serve.merge is searched: quality against $ per 1K output tokens
                        served, from the load tests' inference rows
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunebench.config.search import QUALITY_METRICS

INFERENCE_PARAMS = ("model.name", "serve.merge")


@dataclass
class EpochPoint:
    number: int
    state: str
    cell_id: str
    epoch: int
    epochs_trained: int
    quality: float
    train_usd: float
    params: dict[str, Any]
    source: str          # "optuna" (an intermediate value) or "epoch.json"


def pareto(points: list[Any], quality: str, cost: str, maximize: bool) -> list[Any]:
    """Non-dominated points: none other is at least as good and as cheap, and better in one; by cost."""
    ok = [p for p in points if getattr(p, quality) is not None and getattr(p, cost) is not None]

    def q(p: Any) -> float:
        return getattr(p, quality) if maximize else -getattr(p, quality)

    def dominates(a: Any, b: Any) -> bool:
        return q(a) >= q(b) and getattr(a, cost) <= getattr(b, cost) and (q(a) > q(b) or getattr(a, cost) <
                                                                          getattr(b, cost))

    return sorted([p for p in ok if not any(dominates(o, p) for o in ok)], key=lambda p: getattr(p, cost))


def per_epoch_metric(config: dict[str, Any]) -> tuple[str, str]:
    """The validation metric training reports each epoch (the pruner's, eval_loss by default), its direction."""
    pruner = (config.get("search") or {}).get("pruner") or {}
    metric = (pruner.get("prune_on") if isinstance(pruner, dict) else None) or "eval_loss"
    return metric, QUALITY_METRICS.get(metric, "minimize")


def epoch_values(trial: Any, flipped: bool, study_dir: Path, cell_id: str, metric: str) -> tuple[dict[int, float],
                                                                                              str]:
    """{epoch: value} of one trial: what the driver reported to Optuna (sign restored), else the checkpoints'."""
    if trial.intermediate_values:
        return {int(e): (-v if flipped else v) for e, v in trial.intermediate_values.items()}, "optuna"
    from tunebench.rundir import RunDir

    out = {}
    checkpoints = RunDir.for_cell(study_dir, cell_id).checkpoints
    for path in sorted(checkpoints.glob("epoch-*/epoch.json")) if checkpoints.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record.get(metric), int | float) and record.get("epoch"):
            out[int(record["epoch"])] = float(record[metric])
    return out, "epoch.json"


def epoch_points(store: Any, osearch: Any, config: dict[str, Any], study_dir: Path) -> list[EpochPoint]:
    metric, direction = per_epoch_metric(config)
    # the driver reports the negated value when the per-epoch metric runs against the objective's direction
    flipped = len(osearch.directions) == 1 and direction != osearch.directions[0].name.lower()
    points = []
    for t in osearch.get_trials(deepcopy=False):
        cid = t.user_attrs.get("cell_id")
        if cid is None or t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        values, source = epoch_values(t, flipped, study_dir, cid, metric)
        rows = store.rows("SELECT usd FROM costs WHERE cell_id = ? AND stage = 'train'", (cid,))
        done = store.rows("SELECT value FROM metrics WHERE cell_id = ? AND stage = 'train' AND name = 'epochs_done'",
                          (cid,))
        if not values or not rows or rows[0]["usd"] is None:
            continue
        trained = int(done[0]["value"]) if done and done[0]["value"] else max(values)
        for epoch, value in sorted(values.items()):
            if epoch <= trained:
                points.append(EpochPoint(t.number, t.state.name.lower(), cid, epoch, trained, value,
                                         rows[0]["usd"] * epoch / trained, dict(t.params), source))
    return points


def inference_searched(config: dict[str, Any]) -> bool:
    return bool(set((config.get("search") or {}).get("parameters") or {}) & set(INFERENCE_PARAMS))


def inference_costs(store: Any, cell_ids: list[str]) -> dict[str, float]:
    """The cheapest $ per 1K output tokens each cell's load tests measured (its best serving setting)."""
    out = {}
    for cid in cell_ids:
        row = store.rows("SELECT MIN(usd_per_1k_tokens) AS v FROM inference WHERE cell_id = ?", (cid,))
        if row and row[0]["v"] is not None:
            out[cid] = float(row[0]["v"])
    return out


def scatter_front(path: Path, groups: list[tuple[str, str, list[tuple[float, float]]]],
                  front: list[tuple[float, float]], xlabel: str, ylabel: str, title: str) -> Path:
    """A scatter of labelled point groups (label, marker, [(x, y)]) and the front as a line."""
    from tunebench.study.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, marker, xy in groups:
        if xy:
            ax.scatter([x for x, _ in xy], [y for _, y in xy], marker=marker, label=label, alpha=0.7)
    if front:
        ax.plot([x for x, _ in front], [y for _, y in front], "-", color="black", label="front")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def front_basis(several: bool, epochs: list[EpochPoint], trials: int) -> str:
    """What the report says its quality-vs-$ front is built from."""
    if several:
        return ("The front is built from the final points of an unpruned multi-objective search (Optuna cannot "
                "prune several objectives): every trial ran its full configuration.")
    if epochs:
        return (f"The front is built from every evaluated (trial, epoch) point: {len(epochs)} points of "
                f"{len({p.number for p in epochs})} of the {trials} trials. Each epoch checkpoint is a cheaper "
                "configuration of its own (the trial's parameters with training.epochs = that epoch); pruned "
                "trials contribute the epochs they ran.")
    return ("The front is built from the final evaluations: no per-epoch validation values were recorded "
            "(no pruner reported them to Optuna and no epoch checkpoint holds one).")


def add_epoch_front(report: Any, epochs: list[EpochPoint], config: dict[str, Any], plots_dir: Path) -> None:
    from tunebench.study.report import Figure, Table

    if not epochs:
        return
    metric, direction = per_epoch_metric(config)
    chosen = pareto(epochs, "quality", "train_usd", direction == "maximize")
    plots_dir.mkdir(parents=True, exist_ok=True)
    groups = [(f"{state} trials' epochs", marker, [(p.train_usd, p.quality) for p in epochs if p.state == state])
              for state, marker in (("complete", "o"), ("pruned", "x"))]
    report.add(Figure(scatter_front(plots_dir / "search-front-epochs.png", groups,
                                    [(p.train_usd, p.quality) for p in chosen], "cost to train to that epoch ($)",
                                    f"validation {metric}", f"validation {metric} per (trial, epoch)"),
                      f"validation {metric} at every evaluated epoch of every trial against the training $ to that "
                      "epoch; the line joins the non-dominated (trial, epoch) points"))
    sources = sorted({p.source for p in epochs})
    report.add(Table(["trial", "epoch", "state", f"validation {metric}", "train $ to that epoch", "parameters",
                      "cell"],
                     [[str(p.number), f"{p.epoch} of {p.epochs_trained}", p.state, f"{p.quality:.4g}",
                       f"${p.train_usd:.4f}", params_text(p.params), p.cell_id] for p in chosen],
                     f"the quality-vs-$ front over (trial, epoch) points: validation {metric} from "
                     f"{' and '.join(sources)}; $ = the trial's training $ × epoch / epochs trained"))


def add_inference_front(report: Any, points: list[Any], costs: dict[str, float], metric: str, maximize: bool,
                        plots_dir: Path) -> None:
    """Quality against serving $ per 1K output tokens (`costs`, by cell), when the search varies what is served."""
    from tunebench.study.report import Figure, Para, Table

    served = [p for p in points if p.cell_id in costs and p.quality is not None]
    for p in served:
        p.inference_usd = costs[p.cell_id]
    if not served:
        report.add(Para("Inference cost: the search varies what is served (model.name or serve.merge), but no "
                        "trial's load test recorded a $ per 1K output tokens (run the loadtest stage)."))
        return
    chosen = pareto(served, "quality", "inference_usd", maximize)
    plots_dir.mkdir(parents=True, exist_ok=True)
    groups = [(f"{state} trials", marker, [(p.inference_usd, p.quality) for p in served if p.state == state])
              for state, marker in (("complete", "o"), ("pruned", "x"))]
    report.add(Figure(scatter_front(plots_dir / "search-front-inference.png", groups,
                                    [(p.inference_usd, p.quality) for p in chosen], "inference $ per 1K output tokens",
                                    metric, f"{metric} against inference cost"),
                      f"{metric} against the $ per 1K output tokens each trial's load test measured (its best "
                      "serving setting); the line joins the non-dominated trials"))
    report.add(Table(["trial", "state", metric, "$ / 1K tokens", "train $", "parameters", "cell"],
                     [[str(p.number), p.state, f"{p.quality:.4g}", f"${p.inference_usd:.6f}",
                       "?" if p.train_usd is None else f"${p.train_usd:.4f}", params_text(p.params), p.cell_id]
                      for p in chosen], "the quality-vs-inference-cost front"))
