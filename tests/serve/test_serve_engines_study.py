"""End to end through the real CLI: `tunebench run` load-tests a cell on tunebench's batched engine and on
"vLLM" (the stand-in first on PATH), stores both with the engine's version and command, and `tunebench
report` compares them side by side."""

from __future__ import annotations

import sqlite3

import pytest
from test_serve_engines import standins  # noqa: F401  (vllm and sglang-launch stand-ins first on PATH)

pytestmark = pytest.mark.slow

STUDY = """
name: engines
defaults:
  model: {{name: "{model}"}}
  data: {{source: "builtin:classification", task: classification}}
  eval: {{limit: 4, bootstrap: 20, max_new_tokens: 4}}
  cost: {{instance: cpu-2core}}
  loadtest: {{enabled: true, engines: [batched, vllm], rates: [1], duration: 1, warmup: 0, repeat: 1, bisect: 0,
              max_new_tokens: 4, slo: "p90<=10s"}}
experiments:
  - method: zero_shot
"""


def test_a_study_compares_batched_and_vllm_in_its_report(standins, cli, tiny_llama_dir, tmp_path):  # noqa: F811
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(model=tiny_llama_dir))
    out = tmp_path / "runs"
    result = cli("run", str(study), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(out / "results.db") as conn:
        conn.row_factory = sqlite3.Row
        rows = {r["engine"]: dict(r) for r in conn.execute("SELECT * FROM inference")}
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    assert version == "2" and set(rows) == {"batched", "vllm"}
    assert rows["vllm"]["engine_version"] == "0.0.0+standin" and rows["vllm"]["served"] == "base"
    assert "--max-num-seqs 32" in rows["vllm"]["engine_command"] and rows["vllm"]["max_rps"] == 1
    assert rows["batched"]["engine_version"].startswith("tunebench ")
    report = cli("report", str(out))
    assert report.returncode == 0, report.stderr
    text = (out / "report.md").read_text()
    assert "### Engines compared" in text and "| vllm | 0.0.0+standin | 1.00 |" in text
