"""What a load test is asked to do: durations, the list of rates, the SLO, and the request bound.

Everything here is parsing and checking, so a bad `--sweep` or `--slo` fails with exit code 2 before any
request leaves.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunebench.config.schema import LoadtestConfig
from tunebench.errors import UserError

DEFAULT_SWEEP = "1:32:x2"
# Never sweep more rates than this: a typo such as 0.001:1000:0.001 must not plan a million runs.
MAX_RATES = 200
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|min|h)?\s*$")


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds from '30s', '500ms', '2m', '1h' or a plain number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    match = DURATION_RE.match(str(text))
    if not match:
        raise UserError(f"{what}: cannot read '{text}' as a duration",
                        "write a number with an optional unit: 30s, 500ms, 2m, 1h (a plain number is seconds)")
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


def parse_rate_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--rates: cannot read '{text}' as a list of numbers",
                        "give requests per second separated by commas, e.g. --rates 0.5,1,2,4") from None


def parse_sweep(text: str) -> list[float]:
    """START:STOP:STEP (linear) or START:STOP:xFACTOR (geometric), both ends included when hit."""
    fix = "write START:STOP:STEP (e.g. 1:10:1) or START:STOP:xFACTOR (e.g. 0.5:128:x2), all > 0, START <= STOP"
    parts = text.split(":")
    if len(parts) != 3:
        raise UserError(f"sweep '{text}' does not have three parts", fix)
    geometric = parts[2].strip().lower().startswith("x")
    try:
        start, stop = float(parts[0]), float(parts[1])
        step = float(parts[2].strip()[1:] if geometric else parts[2])
    except ValueError:
        raise UserError(f"sweep '{text}' has a part that is not a number", fix) from None
    if start <= 0 or stop < start:
        raise UserError(f"sweep '{text}': rates must be > 0 and START <= STOP", fix)
    if (geometric and step <= 1) or (not geometric and step <= 0):
        raise UserError(f"sweep '{text}': the step must be > 0 (a factor must be > 1)", fix)
    count = math.log(stop / start, step) if geometric else (stop - start) / step
    if count + 1 > MAX_RATES:
        raise UserError(f"sweep '{text}' has {int(count) + 1} rates, more than the {MAX_RATES} allowed",
                        "use a larger step or a geometric sweep (xFACTOR)")
    rates = [start * step**i if geometric else start + i * step for i in range(int(count + 1e-9) + 1)]
    return [round(r, 9) for r in rates]


def planned_rates(cfg: LoadtestConfig) -> list[float]:
    """The rates to measure, ascending and unique: `rates` wins, then `sweep`, else the default sweep."""
    rates = cfg.rates if cfg.rates else parse_sweep(cfg.sweep or DEFAULT_SWEEP)
    if any(r <= 0 for r in rates):
        raise UserError(f"rates must be > 0 requests/s, got {rates}", "give positive rates, e.g. --rates 0.5,1,2")
    return sorted(set(rates))


def requests_at(rate: float, cfg: LoadtestConfig) -> int:
    """Requests one repetition at `rate` sends, warm-up included (the expected number for Poisson arrivals)."""
    return math.ceil(rate * cfg.warmup - 1e-9) + math.ceil(rate * cfg.duration - 1e-9)


def check_request_bound(rates: list[float], cfg: LoadtestConfig) -> int:
    """Refuse a plan whose worst case (sweep, repetitions and bisection) exceeds cfg.max_requests."""
    per_rep = sum(requests_at(r, cfg) for r in rates) + cfg.bisect * requests_at(max(rates), cfg)
    planned = per_rep * cfg.repeat
    if planned > cfg.max_requests:
        raise UserError(
            f"this load test would send up to {planned:,} requests, more than the bound of {cfg.max_requests:,} "
            f"(rates up to {max(rates):g}/s × {cfg.warmup + cfg.duration:g} s × {cfg.repeat} repetition(s), "
            f"{cfg.bisect} bisection step(s))",
            "lower the rates, --duration, --repeat or --bisect, or raise the bound with --max-requests",
        )
    return planned


# ---------------------------------------------------------------- service-level objective

SLO_STATS = ("mean", "p50", "p90", "p95", "p99", "max")
SLO_FAMILIES = ("latency", "ttft", "tpot", "itl")
SLO_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {"<=": operator.le, "<": operator.lt}
SLO_RE = re.compile(r"^\s*(?:(latency|ttft|tpot|itl)[_.])?(mean|p50|p90|p95|p99|max)\s*(<=|<)\s*(.+?)\s*$")


@dataclass(frozen=True)
class SloClause:
    metric: str  # a key of the per-rate metrics, e.g. latency_p90_s
    op: str
    limit_s: float

    def holds(self, metrics: dict[str, Any]) -> bool:
        value = metrics.get(self.metric)
        return value is not None and not math.isnan(value) and SLO_OPERATORS[self.op](value, self.limit_s)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.limit_s:g} s"


@dataclass(frozen=True)
class Slo:
    text: str
    clauses: tuple[SloClause, ...]

    def violations(self, metrics: dict[str, Any]) -> list[str]:
        return [str(c) for c in self.clauses if not c.holds(metrics)]

    @property
    def latency_lines(self) -> dict[str, float]:
        """End-to-end latency limits, for the plot's SLO line: {'p90': 2.0}."""
        return {c.metric.split("_")[1]: c.limit_s for c in self.clauses if c.metric.startswith("latency_")}


def parse_slo(text: str | None) -> Slo:
    """'p90<=2s', 'p99<5s, ttft_p90<=500ms' ... ('' or 'none': no latency objective)."""
    if not text or text.strip().lower() == "none":
        return Slo("none", ())
    clauses = []
    for part in re.split(r",|\band\b", text):
        match = SLO_RE.match(part)
        if not match:
            raise UserError(
                f"cannot read the SLO clause '{part.strip()}' in '{text}'",
                f"write [FAMILY_]STAT<=DURATION, e.g. 'p90<=2s' or 'p99<5s,ttft_p90<=500ms' "
                f"(families: {', '.join(SLO_FAMILIES)}; stats: {', '.join(SLO_STATS)}; operators: <=, <)",
            )
        family, stat, op, limit = match.groups()
        clauses.append(SloClause(f"{family or 'latency'}_{stat}_s", op, parse_duration(limit, "--slo")))
    return Slo(text, tuple(clauses))
