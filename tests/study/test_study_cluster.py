"""Faults on a real multi-node Ray cluster (ray.cluster_utils.Cluster: a head and two worker nodes with one fake
GPU each, health checks shortened): a node lost mid-training, and a driver killed mid-study."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from tinystudy import stage_rows, tiny_study, write_study

from tunebench.config.study import load_study
from tunebench.rundir import read_json
from tunebench.study import stages as st
from tunebench.study.runner import run_study

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_memory_usage_threshold", "0.99")
    fast_health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                   "health_check_timeout_ms": 500, "health_check_failure_threshold": 2}
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                      "_system_config": fast_health})
    workers = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="warning")
    yield c, workers
    ray.shutdown()
    c.shutdown()


def slow_train(cfg, run, **kwargs):
    """The real training stage, 0.3 s slower per step, so a node can be removed in the middle of it."""
    from transformers import TrainerCallback

    from tunebench.train import train_cell

    class Slow(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            time.sleep(0.3)

    kwargs["callbacks"] = [*kwargs.get("callbacks", []), Slow()]
    return train_cell(cfg, run, **kwargs)



def slow_stages() -> st.StageFunctions:
    real = st.real_stages()
    return st.StageFunctions(train=slow_train, evaluate=real.evaluate)


def lora_study(tmp_path: Path, tiny_llama_dir: Path) -> Path:
    return write_study(tmp_path, tiny_study(tiny_llama_dir, """  - method: lora
    training: {max_steps: 24, save_steps: 2, epochs: 1}
    cost: {price_per_hour: 1.0}
""", limit=4))


def test_a_lost_node_is_retried_on_the_other_node_from_its_last_checkpoint(tmp_path, tiny_llama_dir, cluster):
    c, workers = cluster
    study = load_study(lora_study(tmp_path, tiny_llama_dir))
    out = tmp_path / "runs"
    cell = study.cells[0].id
    outcome: dict = {}
    driver = threading.Thread(target=lambda: outcome.setdefault("o", run_study(
        study, out, executor="ray", stages=slow_stages(), console=Console(quiet=True))))
    driver.start()
    checkpoints = out / cell / "train" / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("checkpoint-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(checkpoints.glob("checkpoint-*")), "training never wrote a step checkpoint"
    node = stage_rows(out / "results.db")[(cell, "train")]["node"]
    lost = next(w for w in workers if w.node_id[:8] in node)
    c.remove_node(lost, allow_graceful=False)
    driver.join(timeout=300)
    assert not driver.is_alive()
    assert outcome["o"].ok
    row = stage_rows(out / "results.db")[(cell, "train")]
    assert row["status"] == "done" and row["attempts"] == 2 and lost.node_id[:8] not in row["node"]
    assert read_json(out / cell / "train" / "summary.json")["resumed_from"]
    assert stage_rows(out / "results.db")[(cell, "eval")]["status"] == "done"


def test_a_killed_driver_reruns_only_what_is_missing(tmp_path, tiny_llama_dir, cluster):
    c, _ = cluster
    text = tiny_study(tiny_llama_dir, """  - method: zero_shot
  - method: lora
    training: {max_steps: 200, save_steps: 5, epochs: 1}
""", limit=4)
    path = write_study(tmp_path, text)
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "tunebench.cli", "run", str(path), "--out", str(out), "--executor", "ray",
               "--address", c.address]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    done_before: set = set()
    while time.monotonic() < deadline and driver.poll() is None:
        try:
            rows = stage_rows(out / "results.db") if (out / "results.db").exists() else {}
        except sqlite3.OperationalError:   # the driver is still creating the schema
            rows = {}
        if rows:
            done_before = {k for k, r in rows.items() if r["status"] == "done"}
            if done_before and any(r["status"] == "running" for r in rows.values()):
                break
        time.sleep(0.3)
    assert driver.poll() is None and done_before, "the driver finished before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = {k: r["finished"] for k, r in stage_rows(out / "results.db").items() if k in done_before}
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    rows = stage_rows(out / "results.db")
    assert all(r["status"] == "done" for r in rows.values())
    assert {k: rows[k]["finished"] for k in done_before} == finished      # reused, not run again
    assert f"{len(done_before)} reused" in rerun.stdout
