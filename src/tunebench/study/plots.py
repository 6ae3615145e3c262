"""The report's plots, as PNG files (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    low: list[float | None] = field(default_factory=list)
    high: list[float | None] = field(default_factory=list)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Write atomically: a crash never leaves half a PNG behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(partial, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    os.replace(partial, path)
    return path


def lines(path: Path, series: list[Series], *, title: str, xlabel: str, ylabel: str, log_x: bool = False,
          references: dict[str, float] | None = None) -> Path:
    """Lines with shaded 95% confidence bands, plus dashed horizontal reference levels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for s in series:
        (line,) = ax.plot(s.x, s.y, marker="o", label=s.label)
        if s.low and all(v is not None for v in s.low + s.high):
            ax.fill_between(s.x, s.low, s.high, alpha=0.2, color=line.get_color())
    for i, (label, level) in enumerate((references or {}).items()):
        ax.axhline(level, linestyle="--", linewidth=1, color=f"C{len(series) + i}", label=label)
    if log_x:  # ticks at the measured sizes, written plainly (8, 16, 32 rather than 10^1)
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ticks = sorted({x for s in series for x in s.x})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def heatmap(path: Path, grid: list[list[float | None]], rows: list[str], columns: list[str], *, title: str,
            row_label: str, column_label: str) -> Path:
    """A grid of values, each cell annotated with its number (blank where a combination was not run)."""
    import numpy as np

    plt = _pyplot()
    values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(columns) + 2.5, 0.8 * len(rows) + 1.8))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), rows)
    ax.set(title=title, xlabel=column_label, ylabel=row_label)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(rows)):
        for j in range(len(columns)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center",
                        color="black" if values[i, j] > middle else "white")
    return _save(fig, path)


def bars(path: Path, groups: list[str], series: dict[str, list[tuple[float, float | None, float | None] | None]],
         *, title: str, ylabel: str) -> Path:
    """Grouped bars with 95% interval whiskers: one group per model, one bar per method."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) + 2), 4.0))
    width = 0.8 / max(1, len(series))
    for k, (label, values) in enumerate(series.items()):
        xs, ys, errs = [], [], [[], []]
        for i, v in enumerate(values):
            if v is None:
                continue
            xs.append(i + k * width)
            ys.append(v[0])
            errs[0].append(v[0] - v[1] if v[1] is not None else 0)
            errs[1].append(v[2] - v[0] if v[2] is not None else 0)
        ax.bar(xs, ys, width, yerr=np.array(errs), capsize=3, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(groups))], groups)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def cumulative_cost(path: Path, lines_usd: dict[str, tuple[float, float]], *, title: str, horizon: float) -> Path:
    """Total cost against requests served: a fixed cost (training) plus a cost per request, log-log."""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    requests = np.logspace(0, np.log10(max(horizon, 10.0)), 200)
    for label, (fixed, per_request) in lines_usd.items():
        ax.plot(requests, fixed + per_request * requests, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(title=title, xlabel="requests served", ylabel="total cost (USD)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
