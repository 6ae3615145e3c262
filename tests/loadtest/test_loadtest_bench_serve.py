"""End to end against `tunebench serve` with a tiny model: `tunebench bench serve` and the study stage."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tunebench.config.schema import CellConfig, CostConfig, LoadtestConfig, ModelConfig
from tunebench.loadtest.bench import serve_command_available
from tunebench.loadtest.stage import run_serve_loadtest
from tunebench.rundir import RunDir

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not serve_command_available(), reason="tunebench serve (issue 7) is not installed")]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def port_is_closed(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as sock:
        return sock.connect_ex((parts.hostname, parts.port)) != 0


def test_bench_serve_compares_naive_and_batched(cli, tiny_llama_dir, tmp_path):
    out = tmp_path / "bench"
    result = cli("bench", "serve", str(tiny_llama_dir), "--engines", "naive,batched", "--rates", "1,2",
                 "--duration", "1s", "--warmup", "0", "--repeat", "1", "--bisect", "0", "--max-new-tokens", "4",
                 "--slo", "p90<=5s", "--instance", "cpu-2core", "--out", str(out), "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "engines compared" in result.stdout

    comparison = json.loads((out / "comparison.json").read_text())
    assert [row["engine"] for row in comparison["engines"]] == ["naive", "batched"]
    for engine in ("naive", "batched"):
        summary = json.loads((out / engine / "loadtest.json").read_text())
        assert [e["offered_rps"] for e in summary["rates"]] == [1, 2]
        slow = summary["rates"][0]["mean"]
        assert slow["success_ratio"] == 1.0  # real generations from the real server
        assert 1 <= slow["output_tokens_mean"] <= 4 and slow["input_tokens_mean"] > 50
        assert summary["token_counts"]["output"] == "server"  # TGI details from tunebench serve
        assert port_is_closed(summary["target"]["url"])  # the server was stopped
        assert (out / engine / "latency.png").read_bytes().startswith(PNG_MAGIC)
        # the batched engine's busy share over each run, from its /metrics (the naive engine does not report it)
        busy = [rate["mean"]["server_engine_busy"] for rate in summary["rates"]]
        assert all(0 < b <= 1 for b in busy) if engine == "batched" else busy == [None, None], busy
    assert comparison["engines"][1]["max_sustainable_rps"] is not None
    assert comparison["engines"][1]["cost_per_1k_tokens"] > 0
    for plot in ("latency.png", "throughput.png"):
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)
    table = (out / "comparison.md").read_text()
    assert "| naive |" in table and "| batched |" in table


def test_study_stage_serves_sweeps_and_stores_results(tiny_llama_dir, tmp_path):
    cell = CellConfig(model=ModelConfig(name=str(tiny_llama_dir)), cost=CostConfig(instance="cpu-2core"),
                      loadtest=LoadtestConfig(enabled=True, engines=["batched"], rates=[1, 2], duration=1, warmup=0,
                                              repeat=1, bisect=0, max_new_tokens=4, slo="p90<=5s"))
    run = RunDir(tmp_path / "cell")
    result = run_serve_loadtest(cell, run, str(tiny_llama_dir), progress=False)
    row = result["engines"]["batched"]
    assert row["max_sustainable_rps"] == 2 and row["cost_per_1k_tokens"] > 0 and row["instance"] == "cpu-2core"
    assert row["latency_p90_s"] < 5 and row["throughput_rps"] == pytest.approx(2, rel=0.15)
    assert Path(row["loadtest"]) == run.serve / "batched" / "loadtest.json" and Path(row["loadtest"]).exists()
    assert Path(result["comparison"]).exists() and all(Path(p).exists() for p in result["plots"].values())
