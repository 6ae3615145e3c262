"""PNG plots like the original report's: latency percentiles and throughput against the offered rate.

Each plot takes one or more series (label -> per-rate entries of loadtest.json), so a single load test and
the naive-vs-batched comparison share the code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunebench.loadtest.spec import Slo

Series = dict[str, list[dict[str, Any]]]
PERCENTILES_ONE = ("p50", "p90", "p99")
PERCENTILES_MANY = ("p90", "p99")
STYLES = {"p50": ":", "p90": "-", "p95": "-.", "p99": "--", "achieved": "-", "throughput": "--"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_colors(series: Series) -> dict[str, str]:
    """A color per series; a single series draws its lines in several colors and marks the max rate in black."""
    return {label: f"C{i}" for i, label in enumerate(series)} if len(series) > 1 else dict.fromkeys(series, "black")


def _column(entries: list[dict[str, Any]], key: str) -> tuple[list[float], list[float], list[float]]:
    rows = [(e["offered_rps"], e["mean"].get(key), e["std"].get(key, 0.0)) for e in entries]
    rows = [row for row in rows if row[1] is not None]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _x_axis(ax: Any, series: Series) -> None:
    rates = [e["offered_rps"] for entries in series.values() for e in entries]
    if rates and max(rates) / min(rates) >= 8:  # geometric sweeps read better on a log axis
        ax.set_xscale("log")
    ax.set_xlabel("offered rate (requests/s)")
    ax.grid(True, which="both", alpha=0.3)


def _max_rate_lines(ax: Any, max_rates: dict[str, float | None], colors: dict[str, Any]) -> None:
    for label, rate in max_rates.items():
        if rate is not None:
            name = f"{label}: " if label else ""
            ax.axvline(rate, color=colors[label], linestyle=(0, (1, 3)), alpha=0.8,
                       label=f"{name}max sustainable {rate:.3g}/s")


def plot_latency(series: Series, slo: Slo, max_rates: dict[str, float | None], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = series_colors(series)
    stats = PERCENTILES_ONE if len(series) == 1 else PERCENTILES_MANY
    drawn: list[float] = []
    for label, entries in series.items():
        for j, stat in enumerate(stats):
            x, y, err = _column(entries, f"latency_{stat}_s")
            drawn += y
            color = colors[label] if len(series) > 1 else f"C{j}"  # one series: a color per percentile
            ax.errorbar(x, y, yerr=err, color=color, linestyle=STYLES[stat], marker="o", markersize=3, capsize=2,
                        label=f"{label} {stat}".strip())
    for stat, limit in slo.latency_lines.items():
        ax.axhline(limit, color="red", linestyle="--", linewidth=1, label=f"SLO {stat} ≤ {limit:g} s")
    _max_rate_lines(ax, max_rates, colors)
    _x_axis(ax, series)
    if drawn and min(drawn) > 0 and max(drawn) / min(drawn) > 50:
        ax.set_yscale("log")  # an overloaded rate's queueing dwarfs the rest: a log axis shows both
    ax.set_ylabel("latency from scheduled send (s)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_throughput(series: Series, max_rates: dict[str, float | None], path: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = series_colors(series)
    for label, entries in series.items():
        for j, (key, style) in enumerate((("achieved_rps", "achieved"), ("throughput_rps", "throughput"))):
            x, y, err = _column(entries, key)
            color = colors[label] if len(series) > 1 else f"C{j}"
            ax.errorbar(x, y, yerr=err, color=color, linestyle=STYLES[style], marker="o", markersize=3, capsize=2,
                        label=f"{label} {style}".strip())
    rates = sorted({e["offered_rps"] for entries in series.values() for e in entries})
    ax.plot(rates, rates, color="grey", linewidth=1, alpha=0.6, label="offered (ideal)")
    _max_rate_lines(ax, max_rates, colors)
    _x_axis(ax, series)
    if ax.get_xscale() == "log":
        ax.set_yscale("log")
    ax.set_ylabel("requests/s")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    partial = path.with_name(f".{path.name}.partial")
    fig.savefig(partial, dpi=110, format="png")
    plt.close(fig)
    partial.replace(path)  # atomic: a reader never sees half a PNG
    return path
