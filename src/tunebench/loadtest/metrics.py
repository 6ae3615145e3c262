"""Per-rate metrics from request records, and mean ± std over repetitions.

Definitions (all over the measured requests, warm-up excluded):
- offered_rps: the rate asked for. sent_rps: the rate requests actually left at (the tool's own check).
- achieved_rps: the requests that completed (a reply came back) between the first send and the last scheduled
  send plus the timeout, divided by the scheduled send duration, or by the span of those completions when
  that is longer. A server that keeps up completes requests as they were sent, so achieved equals offered;
  a saturated one completes them at its capacity (over a span longer than the sends' by more than one send
  interval: it fell behind by at least a request) or lets them time out, so achieved falls below offered.
  Both spans are measured as (last - first) + 1/offered, the duration n requests take at the offered rate,
  and the send span is at least the measured window: with constant arrivals achieved
  is above offered only when more requests truly arrived (Poisson). It used to be
  (n - 1) / (last end - first end), which came out above offered with few requests (1.24/s at 0.5/s).
- throughput_rps: successful requests per second over the same duration.
- latency, TTFT and TPOT statistics are over successful requests, from the scheduled send time; the
  inter-token latency pools every gap between consecutive streamed tokens.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from typing import Any

import numpy as np

from tunebench.loadtest.engine import Record

STATS = {"mean": None, "p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
COUNT_KEYS = ("status_counts", "error_counts")


def describe(values: list[float], prefix: str) -> dict[str, float | None]:
    """mean, p50, p90, p95, p99, max of `values` (linear interpolation), keyed `<prefix>_<stat>_s`."""
    if not values:
        return {f"{prefix}_{stat}_s": None for stat in STATS}
    array = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {}
    for stat, q in STATS.items():
        out[f"{prefix}_{stat}_s"] = float(array.mean() if q is None else np.percentile(array, q))
    return out


def rate_from_times(times: list[float]) -> float | None:
    if len(times) < 2:
        return None
    span = max(times) - min(times)
    return (len(times) - 1) / span if span > 0 else None


def mean_or_none(values: list[int | float]) -> float | None:
    return float(statistics.fmean(values)) if values else None


def span(times: list[float], offered_rps: float) -> float:
    """How long len(times) events took, counting one interval at the offered rate for the first of them."""
    if not times or offered_rps <= 0:
        return 0.0
    return max(times) - min(times) + 1.0 / offered_rps


def summarize(records: list[Record], offered_rps: float, window_s: float | None = None,
              timeout_s: float = math.inf) -> dict[str, Any]:
    """Metrics of one repetition at one rate; `window_s`: the measured window, `timeout_s`: the request timeout."""
    ok = [r for r in records if r.ok]
    n = len(records)
    sent_rps = rate_from_times([r.scheduled + r.lateness for r in records])
    deadline = max((r.scheduled for r in records), default=0.0) + timeout_s
    in_time = [r for r in records if r.end <= deadline and r.error != "timeout"]   # NaN end: never came back
    completed = [r for r in in_time if r.status]   # a reply (any status) came back
    sending = max(window_s or 0.0, span([r.scheduled for r in records], offered_rps))
    finishing = span([r.end for r in completed], offered_rps)
    # Replies spread over more than one send interval longer than the sends: the server fell behind by at least
    # a request, so it completes them at its capacity. Less is latency jitter (a few slow replies among few
    # requests), not a queue, and must not pull achieved below offered.
    duration = finishing if finishing > sending + 1.0 / offered_rps else sending
    achieved = len(completed) / duration if duration > 0 else 0.0
    throughput = sum(1 for r in in_time if r.ok) / duration if duration > 0 else 0.0
    success_ratio = len(ok) / n if n else 0.0
    in_tokens = [r.input_tokens for r in ok if r.input_tokens is not None]
    out_tokens = [r.output_tokens for r in ok if r.output_tokens is not None]
    lateness_ms = np.asarray([r.lateness * 1000 for r in records if not math.isnan(r.lateness)] or [math.nan])
    metrics: dict[str, Any] = {
        "offered_rps": offered_rps,
        "sent_rps": sent_rps,
        "achieved_rps": achieved,
        "throughput_rps": throughput,
        "requests": n,
        "successes": len(ok),
        "success_ratio": success_ratio,
        **describe([r.latency for r in ok], "latency"),
        **describe([r.ttft for r in ok if r.ttft is not None], "ttft"),
        **describe([r.tpot for r in ok if r.tpot is not None], "tpot"),
        **describe([gap for r in ok if r.itl for gap in r.itl], "itl"),
        "input_tokens_mean": mean_or_none(in_tokens),
        "output_tokens_mean": mean_or_none(out_tokens),
        "send_lateness_p50_ms": float(np.nanpercentile(lateness_ms, 50)) if n else None,
        "send_lateness_p99_ms": float(np.nanpercentile(lateness_ms, 99)) if n else None,
        "send_lateness_max_ms": float(np.nanmax(lateness_ms)) if n else None,
        "status_counts": dict(sorted(Counter(str(r.status) if r.status else "none" for r in records).items())),
        "error_counts": dict(sorted(Counter(r.error for r in records if r.error).items())),
    }
    tokens = (metrics["input_tokens_mean"] or 0.0) + (metrics["output_tokens_mean"] or 0.0)
    metrics["tokens_per_request_mean"] = tokens or None
    metrics["output_tokens_per_s"] = metrics["throughput_rps"] * (metrics["output_tokens_mean"] or 0.0)
    return metrics


def aggregate(repetitions: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, float]]:
    """(mean, std) over repetitions: numbers are averaged (std with n - 1), counts are summed."""
    mean: dict[str, Any] = {}
    std: dict[str, float] = {}
    for key in repetitions[0]:
        if key in COUNT_KEYS:
            total: Counter[str] = Counter()
            for rep in repetitions:
                total.update(rep[key])
            mean[key] = dict(sorted(total.items()))
            continue
        values = [rep[key] for rep in repetitions if rep.get(key) is not None]
        mean[key] = float(statistics.fmean(values)) if values else None
        if values:
            std[key] = float(statistics.stdev(values)) if len(values) > 1 else 0.0
    for key in ("requests", "successes"):
        mean[key] = int(sum(rep[key] for rep in repetitions))
    mean["success_ratio"] = mean["successes"] / mean["requests"] if mean["requests"] else 0.0
    return mean, std
