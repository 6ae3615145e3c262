"""The maximum sustainable rate: bisection logic, and the search on a server that saturates at a known rate."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from rich.console import Console

from tunebench.config.schema import LoadtestConfig
from tunebench.loadtest.prompt_sets import PromptSet
from tunebench.loadtest.runner import LoadtestJob, run_loadtest
from tunebench.loadtest.search import RateResult, find_max_rate, judge, max_sustainable
from tunebench.loadtest.spec import parse_slo


def test_bisection_between_last_pass_and_first_failure():
    """A server that holds up to 23.7 requests/s: the sweep brackets it in (20, 40), bisection narrows it."""
    tried = []

    async def measure(rate: float, phase: str) -> RateResult:
        tried.append((rate, phase))
        ok = rate <= 23.7
        mean = {"offered_rps": rate, "achieved_rps": rate if ok else 23.7, "success_ratio": 1.0,
                "throughput_rps": min(rate, 23.7), "latency_p90_s": 0.1}
        return RateResult(rate, phase, mean, {}, [], passed=not judge(mean, parse_slo("none")))

    results = asyncio.run(find_max_rate([5, 10, 20, 40], 3, measure))
    assert tried == [(5, "sweep"), (10, "sweep"), (20, "sweep"), (40, "sweep"), (30, "bisect"), (25, "bisect"),
                     (22.5, "bisect")]
    best = max_sustainable(results)
    assert best["offered_rps"] == 22.5 and best["first_failing_rps"] == 25


def test_judge_reasons():
    slo = parse_slo("p90<=1s")
    good = {"offered_rps": 10, "achieved_rps": 9.6, "success_ratio": 0.995, "latency_p90_s": 0.9}
    assert judge(good, slo) == []
    bad = {"offered_rps": 10, "achieved_rps": 9.4, "success_ratio": 0.98, "latency_p90_s": 1.2}
    reasons = judge(bad, slo)
    assert len(reasons) == 3 and "success" in reasons[0] and "achieved" in reasons[1] and "SLO" in reasons[2]


def test_no_passing_rate():
    mean = {"achieved_rps": 1.0, "throughput_rps": 1.0}
    best = max_sustainable([RateResult(4, "sweep", mean, {}, [], passed=False, reasons=["x"])])
    assert best["offered_rps"] is None and best["first_failing_rps"] == 4


def test_search_finds_the_capacity_of_a_saturating_server(fake_server, tmp_path: Path):
    """One slot of 40 ms serves at most 25 requests/s: the max sustainable rate must land just below it."""
    url = fake_server(delay=0.04, capacity=1)
    cfg = LoadtestConfig(rates=[10, 20, 40], duration=0.6, warmup=0, repeat=1, bisect=2, slo="p90<=500ms",
                         timeout=5)
    job = LoadtestJob(url, cfg, PromptSet(["a prompt"], "test"), tmp_path, title="saturating")
    summary = run_loadtest(job, console=Console(quiet=True), progress=False)
    by_rate = {e["offered_rps"]: e for e in summary["rates"]}
    assert by_rate[10]["passed"] and by_rate[20]["passed"] and not by_rate[40]["passed"]
    assert by_rate[40]["throughput_rps"] == pytest.approx(24, rel=0.15)  # it completes at its capacity
    assert [e["phase"] for e in summary["rates"]].count("bisect") == 2  # 30 fails, then 25 is tried
    best = summary["max_sustainable"]
    assert 20 <= best["offered_rps"] <= 25 and best["offered_rps"] < best["first_failing_rps"] <= 30
