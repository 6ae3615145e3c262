"""End to end through the real CLI: `tunebench run` load-tests a cell on "vLLM" and "SGLang" (the stand-ins first
on PATH) with the study's settings, stores both with the engine's version and command, and `tunebench report`
compares them side by side."""

from __future__ import annotations

import json
import sqlite3

import pytest
from test_serve_engines import flag, gone, standins, starts  # noqa: F401  (the stand-ins first on PATH)

pytestmark = pytest.mark.slow

STUDY = """
name: engines
defaults:
  model: {{name: "{model}"}}
  data: {{source: "builtin:classification", task: classification}}
  eval: {{limit: 4, bootstrap: 20, max_new_tokens: 4}}
  cost: {{instance: cpu-2core}}
  serve: {{max_concurrency: 3, gpu_memory_fraction: 0.5, sglang_command: sglang-launch}}
  loadtest: {{enabled: true, engines: [vllm, sglang], rates: [1], duration: 1, warmup: 0, repeat: 1, bisect: 0,
              max_new_tokens: 4, slo: "p90<=10s"}}
experiments:
  - method: zero_shot
"""


def test_a_study_runs_vllm_and_sglang_and_compares_them(standins, cli, tiny_llama_dir, tmp_path):  # noqa: F811
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(model=tiny_llama_dir))
    out = tmp_path / "runs"
    result = cli("run", str(study), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr

    logged = starts(standins)
    assert [s["engine"] for s in logged] == ["vllm", "sglang"]
    vllm, sglang = logged[0]["argv"], logged[1]["argv"]
    assert vllm[0] == "serve" and flag(vllm, "--max-num-seqs") == "3"
    assert flag(vllm, "--gpu-memory-utilization") == "0.5" and flag(vllm, "--dtype") == "auto"
    assert flag(sglang, "--max-running-requests") == "3" and flag(sglang, "--mem-fraction-static") == "0.5"
    (export,) = out.glob("*/serve/export/export.json")
    assert vllm[1] == json.loads(export.read_text())["model"] == flag(sglang, "--model-path")  # one export, both
    assert all(gone(s["pid"]) for s in logged)  # each stopped after its load test

    with sqlite3.connect(out / "results.db") as conn:
        conn.row_factory = sqlite3.Row
        rows = {r["engine"]: dict(r) for r in conn.execute("SELECT * FROM inference")}
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert version == "3" and set(rows) == {"vllm", "sglang"}
    for row in rows.values():
        assert row["engine_version"] == "0.0.0+standin" and row["served"] == "base" and row["max_rps"] == 1
        assert row["usd_per_1k_tokens"] > 0 and row["pricing"] == "per hour"
    assert "--max-model-len" in rows["vllm"]["engine_command"]
    assert rows["sglang"]["engine_command"].startswith("sglang-launch --model-path")

    report = cli("report", str(out))
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "### Engines compared" in text and "| vllm | 0.0.0+standin | 1.00 |" in text
    assert "| sglang | 0.0.0+standin | 1.00 |" in text and "sglang: `sglang-launch --model-path" in text
