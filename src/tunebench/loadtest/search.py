"""The maximum sustainable rate: sweep the planned rates, then bisect between the last pass and first failure.

A rate passes when, averaged over its repetitions, at least 99% of requests succeed, the server completes
requests at ≥ 95% of the offered rate, and every SLO clause holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from tunebench.loadtest.spec import Slo

MIN_SUCCESS = 0.99
MIN_ACHIEVED = 0.95
# Stop bisecting once the bracket is this narrow (relative to the failing rate): finer is noise.
MIN_BRACKET = 0.02


@dataclass
class RateResult:
    offered_rps: float
    phase: str  # "sweep" or "bisect"
    mean: dict[str, Any]
    std: dict[str, float]
    repetitions: list[dict[str, Any]]
    passed: bool = False
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge(mean: dict[str, Any], slo: Slo) -> list[str]:
    """Why a rate fails (empty when it passes)."""
    reasons = []
    if mean["success_ratio"] < MIN_SUCCESS:
        reasons.append(f"success {mean['success_ratio']:.1%} < {MIN_SUCCESS:.0%}")
    if mean["achieved_rps"] < MIN_ACHIEVED * mean["offered_rps"]:
        reasons.append(f"achieved {mean['achieved_rps']:.3g}/s < {MIN_ACHIEVED:.0%} of offered "
                       f"{mean['offered_rps']:.3g}/s")
    return reasons + [f"SLO {v}" for v in slo.violations(mean)]


Measure = Callable[[float, str], Awaitable[RateResult]]


def bracket(results: list[RateResult]) -> tuple[RateResult | None, RateResult | None]:
    """(highest passing rate, lowest failing rate above it)."""
    passing = [r for r in results if r.passed]
    best = max(passing, key=lambda r: r.offered_rps) if passing else None
    floor = best.offered_rps if best else 0.0
    failing = [r for r in results if not r.passed and r.offered_rps > floor]
    return best, min(failing, key=lambda r: r.offered_rps) if failing else None


async def find_max_rate(rates: list[float], bisect_steps: int, measure: Measure) -> list[RateResult]:
    """Measure every planned rate, then bisect; return all results ascending by rate."""
    results = [await measure(rate, "sweep") for rate in sorted(rates)]
    for _ in range(bisect_steps):
        low, high = bracket(results)
        if low is None or high is None:
            break
        if (high.offered_rps - low.offered_rps) / high.offered_rps < MIN_BRACKET:
            break
        results.append(await measure(round((low.offered_rps + high.offered_rps) / 2, 6), "bisect"))
    return sorted(results, key=lambda r: r.offered_rps)


def max_sustainable(results: list[RateResult]) -> dict[str, Any]:
    """The answer, with the bracket that bounds it and why the next rate failed."""
    low, high = bracket(results)
    if low is None:
        return {"offered_rps": None, "note": "even the lowest rate failed; sweep lower rates",
                "first_failing_rps": high.offered_rps if high else None,
                "failure_reasons": high.reasons if high else []}
    out = {"offered_rps": low.offered_rps, "achieved_rps": low.mean["achieved_rps"],
           "throughput_rps": low.mean["throughput_rps"], "latency_p90_s": low.mean["latency_p90_s"],
           "first_failing_rps": high.offered_rps if high else None,
           "failure_reasons": high.reasons if high else []}
    if high is None:
        out["note"] = "every rate passed: the server sustains at least this; sweep higher rates to find its limit"
    return out
