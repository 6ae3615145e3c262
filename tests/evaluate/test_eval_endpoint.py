"""model.endpoint: a hosted model as the zero/few-shot baseline, against `tunebench serve` on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError
from tunebench.rundir import RunDir

KEY = "sk-hosted-test"


@pytest.fixture(scope="module")
def served(tiny_llama_dir, tmp_path_factory):
    """`tunebench serve` (the real CLI, in a child process) on the tiny model, behind an API key."""
    from tunebench.serve.process import ServerProcess, free_port

    log = tmp_path_factory.mktemp("served") / "server.log"
    with ServerProcess([str(tiny_llama_dir), "--api-key", KEY, "--device", "cpu"], host="127.0.0.1",
                       port=free_port(), log=log, startup_timeout=180) as server:
        yield server.url


def cell_for(tiny_llama_dir, url: str, method: str = "zero_shot", **model) -> CellConfig:
    return CellConfig.model_validate({
        "model": {"name": str(tiny_llama_dir), "endpoint": url, "endpoint_api_key_env": "HOSTED_KEY",
                  "endpoint_input_usd_per_1m": 2.0, "endpoint_output_usd_per_1m": 8.0, **model},
        "data": {"source": "builtin:classification", "task": "classification"}, "method": method,
        "eval": {"limit": 6, "bootstrap": 50, "max_new_tokens": 4}})


def test_a_hosted_model_is_evaluated_and_billed_per_token(served, tiny_llama_dir, tmp_path, monkeypatch):
    from tunebench.evaluate import evaluate_cell
    from tunebench.study.stages import eval_record

    monkeypatch.setenv("HOSTED_KEY", KEY)
    cell = cell_for(tiny_llama_dir, served + "/v1", method="few_shot")
    run = RunDir(tmp_path / "cell")
    doc = evaluate_cell(cell, run, progress=False)
    hosted = doc["endpoint"]
    assert doc["n_evaluated"] == 6 and doc["scoring"] == "generate" and "hosted model" in doc["model_note"]
    assert hosted["url"] == served and hosted["input_tokens"] > 6 * 20 and hosted["output_tokens"] >= 6
    assert hosted["usd"] == pytest.approx((hosted["input_tokens"] * 2.0 + hosted["output_tokens"] * 8.0) / 1e6)
    assert 0.0 <= doc["metrics"]["accuracy"]["value"] <= 1.0
    lines = [json.loads(line) for line in (run.eval_dir("test", "few_shot") / "predictions.jsonl").open()]
    assert len(lines) == 6 and all(isinstance(r["raw_output"], str) for r in lines)

    record = eval_record(cell, run, 3.0)
    assert record.cost.usd == pytest.approx(hosted["usd"]) and record.cost.device == "hosted"
    assert record.cost.tokens == hosted["input_tokens"] + hosted["output_tokens"]
    assert cell.model.endpoint  # and the report names it as its own row:
    from tunebench.config.study import Cell
    assert Cell("c", cell).axes()["model"] == f"{tiny_llama_dir} (hosted)"


def test_the_hosted_answers_are_the_local_model_s_greedy_answers(served, tiny_llama_dir, tmp_path, monkeypatch):
    """The same prompts through the API and through local generate-scoring give the same predictions."""
    from tunebench.evaluate import evaluate_cell

    monkeypatch.setenv("HOSTED_KEY", KEY)
    hosted = evaluate_cell(cell_for(tiny_llama_dir, served), RunDir(tmp_path / "hosted"), progress=False)
    local_cell = cell_for(tiny_llama_dir, served).model_copy(deep=True)
    local_cell.model.endpoint = None
    local_cell.eval.scoring = "generate"
    local_cell.eval.calibrate = "none"
    local = evaluate_cell(local_cell, RunDir(tmp_path / "local"), progress=False)
    preds = [[json.loads(line)["raw_output"] for line in (RunDir(tmp_path / d).eval_dir("test", "zero_shot")
                                                           / "predictions.jsonl").open()] for d in ("hosted", "local")]
    assert preds[0] == preds[1]
    assert hosted["metrics"]["accuracy"]["value"] == local["metrics"]["accuracy"]["value"]


def test_a_wrong_key_or_missing_variable_is_a_user_error(served, tiny_llama_dir, tmp_path, monkeypatch):
    from tunebench.evaluate import evaluate_cell

    monkeypatch.delenv("HOSTED_KEY", raising=False)
    with pytest.raises(UserError, match="HOSTED_KEY"):
        evaluate_cell(cell_for(tiny_llama_dir, served), RunDir(tmp_path / "a"), progress=False)
    monkeypatch.setenv("HOSTED_KEY", "wrong")
    with pytest.raises(UserError, match="answered 401"):
        evaluate_cell(cell_for(tiny_llama_dir, served), RunDir(tmp_path / "b"), progress=False)


def test_a_hosted_model_cannot_be_fine_tuned():
    with pytest.raises(ValueError, match="can be prompted"):
        CellConfig.model_validate({"model": {"endpoint": "http://127.0.0.1:1"}, "method": "lora"})


def test_a_hosted_cell_s_load_test_measures_its_endpoint(served, tiny_llama_dir, tmp_path, monkeypatch):
    from tunebench.loadtest.stage import run_serve_loadtest

    monkeypatch.setenv("HOSTED_KEY", KEY)
    cell = cell_for(tiny_llama_dir, served).model_copy(deep=True)
    cell.loadtest = cell.loadtest.model_copy(update=dict(enabled=True, rates=[1], duration=1, warmup=0, repeat=1,
                                                         bisect=0, max_new_tokens=4, slo="p90<=10s"))
    result = run_serve_loadtest(cell, RunDir(tmp_path / "cell"), cell.model.name, progress=False)
    (row,) = result["engines"].values()
    assert row["engine"] == "hosted" and row["pricing"] == "per token" and row["max_sustainable_rps"] == 1
    assert row["cost_per_1k_requests"] > 0


def test_tunebench_run_reports_the_hosted_baseline(served, cli, tiny_llama_dir, tmp_path):
    """Through the real CLI: a study with a hosted zero-shot cell, its billed cost in results.db, its report row."""
    import sqlite3

    study = tmp_path / "study.yaml"
    study.write_text(f"""
name: hosted
defaults:
  model: {{name: "{tiny_llama_dir}", endpoint: "{served}", endpoint_model: "{tiny_llama_dir}",
          endpoint_api_key_env: HOSTED_KEY, endpoint_input_usd_per_1m: 2.0, endpoint_output_usd_per_1m: 8.0}}
  data: {{source: "builtin:classification", task: classification}}
  eval: {{limit: 4, bootstrap: 20, max_new_tokens: 4}}
experiments:
  - method: zero_shot
""")
    out = tmp_path / "runs"
    result = cli("run", str(study), "--out", str(out), env={"HOSTED_KEY": KEY, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    (metrics,) = out.glob("*/eval/test-zero_shot/metrics.json")
    billed = json.loads(metrics.read_text())["endpoint"]["usd"]
    with sqlite3.connect(out / "results.db") as conn:
        (usd, device), = conn.execute("SELECT usd, device FROM costs WHERE stage = 'eval'").fetchall()
        (model,), = conn.execute("SELECT model FROM cells").fetchall()
    assert usd == pytest.approx(billed) and billed > 0 and device == "hosted"
    assert model == f"{tiny_llama_dir} (hosted)"
    assert cli("report", str(out)).returncode == 0
    assert f"| {tiny_llama_dir} (hosted) |" in (out / "report.md").read_text()
