"""Parsing and checking a load-test plan: durations, rates, sweeps, the SLO and the request bound."""

from __future__ import annotations

import pytest

from tunebench.config.schema import LoadtestConfig
from tunebench.errors import UserError
from tunebench.loadtest.engine import arrival_offsets, run_schedule
from tunebench.loadtest.spec import (
    check_request_bound,
    parse_duration,
    parse_slo,
    parse_sweep,
    planned_rates,
)


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("500ms", 0.5), ("2m", 120), ("1.5", 1.5), (7, 7),
                                               ("1h", 3600)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "fast", "3 weeks", "-1s"])
def test_bad_durations_are_user_errors(text):
    with pytest.raises(UserError, match="duration"):
        parse_duration(text)


def test_linear_and_geometric_sweeps():
    assert parse_sweep("1:5:1") == [1, 2, 3, 4, 5]
    assert parse_sweep("0.5:4:x2") == [0.5, 1, 2, 4]
    assert parse_sweep("1:100:x10") == [1, 10, 100]
    assert parse_sweep("0.1:0.3:0.1") == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("text", ["0:10:1", "1:10:-1", "1:10:0", "1:10:x1", "1:10:x0.5", "10:1:1", "1:2", "a:b:c",
                                  "1:100000:1"])
def test_bad_sweeps_are_user_errors(text):
    with pytest.raises(UserError):
        parse_sweep(text)


def test_rates_win_over_sweep_and_zero_is_refused():
    assert planned_rates(LoadtestConfig(rates=[4, 1, 2, 2], sweep="1:2:1")) == [1, 2, 4]
    assert planned_rates(LoadtestConfig(sweep="2:8:x2")) == [2, 4, 8]
    assert planned_rates(LoadtestConfig()) == [1, 2, 4, 8, 16, 32]
    with pytest.raises(ValueError, match="> 0"):
        LoadtestConfig(rates=[0])


def test_request_bound_names_the_bound():
    cfg = LoadtestConfig(duration=10, warmup=0, repeat=2, bisect=0, max_requests=1000)
    assert check_request_bound([10, 20], cfg) == 600
    with pytest.raises(UserError, match="bound of 1,000") as err:
        check_request_bound([10, 20, 40], cfg)
    assert "--max-requests" in err.value.fix


def test_slo_clauses():
    slo = parse_slo("p90<=2s, ttft_p99 < 500ms")
    assert [(c.metric, c.op, c.limit_s) for c in slo.clauses] == [("latency_p90_s", "<=", 2.0),
                                                                  ("ttft_p99_s", "<", 0.5)]
    assert slo.violations({"latency_p90_s": 1.0, "ttft_p99_s": 0.2}) == []
    assert slo.violations({"latency_p90_s": 2.5, "ttft_p99_s": 0.5}) == ["latency_p90_s <= 2 s", "ttft_p99_s < 0.5 s"]
    assert slo.violations({"latency_p90_s": None, "ttft_p99_s": 0.1}) == ["latency_p90_s <= 2 s"]
    assert slo.latency_lines == {"p90": 2.0}
    assert parse_slo("none").clauses == ()
    with pytest.raises(UserError, match="p42"):
        parse_slo("p42<=1s")


def test_a_run_always_measures_at_least_one_request():
    assert run_schedule(0.1, warmup=5, duration=5, arrival="constant") == [0, 5]
    assert run_schedule(10, warmup=0.2, duration=0.3, arrival="constant") == pytest.approx([0, 0.1, 0.2, 0.3, 0.4])
    assert run_schedule(50, warmup=0, duration=1, arrival="poisson")[0] == 0


def test_arrivals_constant_and_poisson():
    assert arrival_offsets(4, 1, "constant") == [0, 0.25, 0.5, 0.75]
    poisson = arrival_offsets(200, 10, "poisson", seed=1)
    assert poisson == arrival_offsets(200, 10, "poisson", seed=1)
    assert 1800 < len(poisson) < 2200 and poisson == sorted(poisson) and poisson[-1] < 10
