"""loadtest.url: a server tunebench does not start, priced per hour or per token, beside the engines."""

from __future__ import annotations

import json

import pytest

from tunebench.config.schema import CellConfig, CostConfig, LoadtestConfig, ModelConfig
from tunebench.errors import UserError
from tunebench.loadtest.bench import BenchPlan, RemoteServer, bench_engines
from tunebench.loadtest.inference_cost import TokenPrices, token_priced_cost
from tunebench.loadtest.prompt_sets import builtin_prompts

FAST = dict(rates=[2], duration=1, warmup=0, repeat=1, bisect=0, max_new_tokens=4, slo="p90<=5s")


def test_per_token_prices_cost_the_same_at_any_rate():
    prices = TokenPrices(input_usd_per_1m=0.5, output_usd_per_1m=2.0)
    slow, fast = token_priced_cost(prices, 1.0, 100, 20), token_priced_cost(prices, 50.0, 100, 20)
    per_request = (100 * 0.5 + 20 * 2.0) / 1e6
    assert slow["cost_per_1k_requests"] == fast["cost_per_1k_requests"] == pytest.approx(per_request * 1000)
    assert slow["cost_per_1k_tokens"] == pytest.approx(per_request / 120 * 1000)
    assert fast["price_per_hour"] == pytest.approx(per_request * 50 * 3600)  # the bill at that rate
    assert slow["pricing"] == "per token"


def test_the_url_is_load_tested_after_the_engines_with_its_prices(fake_server, tmp_path, monkeypatch):
    url = fake_server(delay=0.01, tokens=4)
    monkeypatch.setenv("HOSTED_KEY", "sk-test")
    cfg = LoadtestConfig(engines=[], url=url, url_name="hosted", url_api_key_env="HOSTED_KEY",
                         url_input_usd_per_1m=1.0, url_output_usd_per_1m=4.0, **FAST)
    remote = RemoteServer.from_config(cfg)
    assert remote is not None and remote.api_key == "sk-test" and remote.price is None
    plan = BenchPlan([], [], cfg, builtin_prompts(), tmp_path, remote=remote, title="hosted")
    comparison = bench_engines(plan, progress=False)
    (row,) = comparison["engines"]
    assert row["engine"] == "hosted" and row["pricing"] == "per token" and row["max_sustainable_rps"] == 2
    summary = json.loads((tmp_path / "hosted" / "loadtest.json").read_text())
    mean = summary["rates"][0]["mean"]
    expected = (mean["input_tokens_mean"] * 1.0 + mean["output_tokens_mean"] * 4.0) / 1e6 * 1000
    assert row["cost_per_1k_requests"] == pytest.approx(expected)
    assert summary["target"]["api"] == "openai" and row["engine_command"].startswith("(not started)")


def test_url_settings_that_contradict_each_other_are_refused(monkeypatch):
    with pytest.raises(UserError, match="not both"):
        RemoteServer.from_config(LoadtestConfig(url="http://127.0.0.1:1", url_price_per_hour=2.0,
                                                url_input_usd_per_1m=1.0, url_output_usd_per_1m=1.0))
    with pytest.raises(UserError, match="only one of"):
        RemoteServer.from_config(LoadtestConfig(url="http://127.0.0.1:1", url_input_usd_per_1m=1.0))
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(UserError, match="NO_SUCH_KEY"):
        RemoteServer.from_config(LoadtestConfig(url="http://127.0.0.1:1", url_api_key_env="NO_SUCH_KEY"))
    hourly = RemoteServer.from_config(LoadtestConfig(url="http://127.0.0.1:1", url_price_per_hour=3.5))
    assert hourly is not None and hourly.price.price_per_hour == 3.5 and hourly.token_prices is None


def test_the_study_stage_adds_the_url_row(fake_server, tiny_llama_dir, tmp_path):
    from tunebench.loadtest.stage import run_serve_loadtest
    from tunebench.rundir import RunDir
    from tunebench.study.stages import loadtest_record

    url = fake_server(delay=0.01, tokens=4)
    cell = CellConfig(model=ModelConfig(name=str(tiny_llama_dir)), cost=CostConfig(instance="cpu-2core"),
                      loadtest=LoadtestConfig(enabled=True, engines=[], url=url, url_price_per_hour=1.5, **FAST))
    run = RunDir(tmp_path / "cell")
    result = run_serve_loadtest(cell, run, str(tiny_llama_dir), progress=False)
    assert list(result["engines"]) == ["external"]
    (row,) = loadtest_record(cell, run, 1.0, tmp_path).inference
    assert row["engine"] == "external" and row["price_per_hour"] == 1.5 and row["pricing"] == "per hour"


def test_the_loadtest_cli_takes_per_token_prices(cli, fake_server, tmp_path):
    url = fake_server(delay=0.01, tokens=4)
    result = cli("loadtest", "--url", url, "--api", "openai", "--rates", "2", "--duration", "1s", "--warmup", "0",
                 "--repeat", "1", "--bisect", "0", "--input-usd-per-1m", "0.15", "--output-usd-per-1m", "0.6",
                 "--out", str(tmp_path / "lt"), "--no-progress")
    assert result.returncode == 0, result.stderr + result.stdout
    cost = json.loads((tmp_path / "lt" / "loadtest.json").read_text())["cost"]
    assert cost["pricing"] == "per token" and cost["cost_per_1k_output_tokens"] == pytest.approx(0.0006)
    bad = cli("loadtest", "--url", url, "--input-usd-per-1m", "0.15", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--output-usd-per-1m" in bad.stderr


def test_a_per_token_price_needs_no_passing_rate(fake_server, tmp_path):
    """Billed per token, the cost is known even when no rate met the SLO (a hosted API's latency)."""
    from tunebench.loadtest.runner import LoadtestJob, run_loadtest

    url = fake_server(delay=0.2, tokens=4)
    cfg = LoadtestConfig(api="openai", **{**FAST, "slo": "p90<=10ms"})
    job = LoadtestJob(url, cfg, builtin_prompts(), tmp_path, token_prices=TokenPrices(1.0, 4.0))
    summary = run_loadtest(job, progress=False)
    assert summary["max_sustainable"]["offered_rps"] is None  # the SLO failed
    assert summary["cost"]["pricing"] == "per token" and summary["cost"]["cost_per_1k_requests"] > 0
