"""The run-directory contract and the price table."""

from __future__ import annotations

import json

import pytest

from tunebench import cost
from tunebench.config.schema import CellConfig
from tunebench.errors import UserError
from tunebench.rundir import RunDir, provenance, write_json


def test_run_dir_layout_and_config_round_trip(tmp_path):
    run = RunDir.for_cell(tmp_path / "runs" / "demo", "cell-1234")
    cfg = CellConfig.model_validate({"method": "lora", "lora": {"r": 4}})
    run.write_config(cfg)
    assert run.read_config() == cfg
    assert run.eval_dir("test", "lora") == run.path / "eval" / "test-lora"
    # a split given as a file path must not lead outside the run directory
    assert run.eval_dir("/data/held-out.jsonl", "zero_shot") == run.path / "eval" / "held-out-zero_shot"
    assert run.eval_dir("../x/test.csv", "lora") == run.path / "eval" / "test-lora"
    assert run.adapter == run.path / "train" / "adapter"


def test_read_config_of_a_non_run_dir(tmp_path):
    with pytest.raises(UserError, match="not a tunebench run directory"):
        RunDir(tmp_path).read_config()


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        write_json(target, {"bad": object.__new__(type("Unserializable", (), {"__str__": None}))})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_provenance_fields():
    prov = provenance(CellConfig(), data_hash="abc", device="cpu")
    assert prov["packages"]["torch"] and prov["data_hash"] == "abc" and prov["seed"] == 0


def test_price_table_has_the_original_instances_and_current_gpus():
    table = cost.price_table()
    assert table["g5.2xlarge"].price_per_hour == 1.212 and table["g5.4xlarge"].price_per_hour == 1.624
    for key in ("t4", "l4", "a10g", "a100-40gb", "a100-80gb", "h100", "h200"):
        assert table[key].source and table[key].date


def test_price_resolution_order():
    assert cost.resolve_price("h200", 2.5, "NVIDIA H200").price_per_hour == 2.5
    assert cost.resolve_price("g5.2xlarge", None, "NVIDIA H200").name == "g5.2xlarge"
    assert cost.resolve_price(None, None, "NVIDIA H200").name == "h200"
    assert cost.resolve_price(None, None, None).name == "cpu-2core"
    with pytest.raises(UserError, match="no price known"):
        cost.resolve_price(None, None, "Some Unknown Accelerator")
    with pytest.raises(UserError, match="did you mean 'h100'"):
        cost.lookup("h10")


def test_training_cost_and_serving_cost_formulas():
    assert cost.training_cost(7200, cost.lookup("g5.2xlarge")) == pytest.approx(2.424)
    # The original study: TGI at 135 requests/s x ~120 tokens each on a g5.4xlarge ($1.624/h).
    assert cost.cost_per_1k_tokens(1.624, 135, 120) == pytest.approx(0.0000278, rel=0.01)
