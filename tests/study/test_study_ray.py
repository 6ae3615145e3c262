"""The Ray executor on one local Ray instance with two fake GPUs (shared by every test of this module): units run
concurrently on different GPUs, a 2-GPU unit gets both and waits for them, results equal the inline executor's,
a killed task is retried, Ctrl-C cancels, and storage on S3 (a moto server on 127.0.0.1) works like a path."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from tinystudy import stage_rows, tiny_study, write_study

from tunebench.config.study import load_study
from tunebench.rundir import write_json
from tunebench.study import stages as st
from tunebench.study.runner import run_study

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def s3_server():
    """An S3 server on 127.0.0.1 (moto), set up before Ray starts so its workers inherit the endpoint."""
    pytest.importorskip("s3fs")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "FSSPEC_S3_ENDPOINT_URL": url}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = url
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("studies")
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module", autouse=True)
def local_ray(s3_server):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the stand-in stages below travel by value
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_memory_usage_threshold", "0.99")   # a busy machine is not a reason to kill tests
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="warning")
    yield
    ray.shutdown()


def quiet() -> Console:
    return Console(quiet=True)


# ---------------------------------------------------------------- stand-in stages: sleep, note where they ran


def note_train(cfg, run, **kwargs):
    start = time.time()
    time.sleep(float(cfg.training.max_steps or 1) / 10)
    write_json(run.train / "summary.json", {
        "device": "stand-in", "wall_time_s": time.time() - start, "tokens_seen": 100,
        "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "start": start, "end": time.time()})
    return {}


def note_eval(cfg, run, **kwargs):
    folder = st.eval_dir(cfg, run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("")
    write_json(folder / "metrics.json", {"n_evaluated": 1, "metrics": {"accuracy": 1.0}})
    return {}


STANDINS = st.StageFunctions(train=note_train, evaluate=note_eval)
MEETING: dict[str, str] = {}   # set by a test before it submits: cloudpickle carries the value to the workers


def meet_train(cfg, run, **kwargs):
    """Arrive, then wait (up to 60 s) until every unit of the meeting has arrived: two units that could not
    run at once time out here, however slowly their workers start."""
    folder, expected = Path(MEETING["folder"]), int(MEETING["units"])
    (folder / f"{os.getpid()}-{cfg.lora.r}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    deadline = time.time() + 60
    while len(list(folder.iterdir())) < expected and time.time() < deadline:
        time.sleep(0.05)
    met = len(list(folder.iterdir())) >= expected
    write_json(run.train / "summary.json", {"device": "stand-in", "wall_time_s": 0.0, "tokens_seen": 100,
                                            "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "met": met})
    return {}


def standin_study(tmp_path: Path, cells: list[tuple[int, int]]) -> Path:
    """LoRA cells that sleep max_steps/10 s, each with its GPU count: [(gpus, max_steps), ...]."""
    exps = "".join(f"  - {{method: lora, lora: {{r: {i + 1}}}, training: {{max_steps: {steps}}}, "
                   f"resources: {{gpus: {gpus}}}}}\n" for i, (gpus, steps) in enumerate(cells))
    return write_study(tmp_path, f"name: standin\ndefaults: {{cost: {{price_per_hour: 1.0}}}}\nexperiments:\n{exps}")


def summaries(out: Path) -> dict[str, dict]:
    import json

    return {p.parent.parent.name: json.loads(p.read_text()) for p in out.glob("*/train/summary.json")}


# ---------------------------------------------------------------- tests


def test_two_single_gpu_units_run_at_once_on_different_gpus(tmp_path):
    # A rendezvous, not start/end times: under load a fresh worker can start after a short sleep has ended.
    study = load_study(standin_study(tmp_path, [(1, 1), (1, 1)]))
    out = tmp_path / "runs"
    (tmp_path / "meeting").mkdir()
    MEETING.update(folder=str(tmp_path / "meeting"), units="2")
    outcome = run_study(study, out, executor="ray", stages=st.StageFunctions(train=meet_train, evaluate=note_eval),
                        console=quiet())
    assert outcome.ok and outcome.tally.ran == 4
    runs = list(summaries(out).values())
    assert sorted(r["gpus"] for r in runs) == ["0", "1"]
    assert all(r["met"] for r in runs)                          # both were running at once
    rows = stage_rows(out / "results.db")
    assert {r["gpus"] for (_, stage), r in rows.items() if stage == "train"} == {"0", "1"}
    assert all(r["node"] for r in rows.values())


def test_a_two_gpu_unit_gets_both_gpus_and_waits_for_them(tmp_path):
    study = load_study(standin_study(tmp_path, [(1, 10), (2, 10), (1, 10)]))
    out = tmp_path / "runs"
    assert run_study(study, out, executor="ray", stages=STANDINS, console=quiet()).ok
    runs = list(summaries(out).values())
    both = next(r for r in runs if "," in r["gpus"])
    assert sorted(both["gpus"].split(",")) == ["0", "1"]
    for other in (r for r in runs if r is not both):
        assert other["end"] <= both["start"] or other["start"] >= both["end"]   # never beside it


def test_inline_and_ray_give_identical_metrics(tmp_path, tiny_llama_dir):
    import torch

    text = tiny_study(tiny_llama_dir, "  - method: zero_shot\n  - method: lora\n    training: {epochs: 1}\n",
                      limit=4)
    study = load_study(write_study(tmp_path, text))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # Ray's workers run with OMP_NUM_THREADS=1
    try:
        assert run_study(study, tmp_path / "inline", console=quiet()).ok
    finally:
        torch.set_num_threads(threads)
    assert run_study(study, tmp_path / "ray", executor="ray", console=quiet()).ok

    def metrics(db: Path) -> dict:
        with sqlite3.connect(db) as conn:
            return {(c, s, n): v for c, s, n, v in conn.execute("SELECT cell_id, stage, name, value FROM metrics")
                    if n in ("accuracy", "macro_f1", "train_loss", "eval_loss")}

    inline, on_ray = metrics(tmp_path / "inline" / "results.db"), metrics(tmp_path / "ray" / "results.db")
    assert inline and inline == on_ray


def crash_once_train(cfg, run, **kwargs):
    """Dies by SIGKILL the first time (after writing a step checkpoint); resumes from it the second time."""
    checkpoint = run.checkpoints / "checkpoint-1"
    if not checkpoint.exists():
        checkpoint.mkdir(parents=True)
        os.kill(os.getpid(), signal.SIGKILL)
    assert kwargs["resume"] is True
    return note_train(cfg, run, **kwargs)


def test_a_killed_worker_is_retried_and_resumes(tmp_path):
    study = load_study(standin_study(tmp_path, [(1, 1)]))
    out = tmp_path / "runs"
    stages = st.StageFunctions(train=crash_once_train, evaluate=note_eval)
    assert run_study(study, out, executor="ray", stages=stages, console=quiet()).ok
    rows = stage_rows(out / "results.db")
    train = next(r for (_, stage), r in rows.items() if stage == "train")
    assert train["status"] == "done" and train["attempts"] == 2


def always_crash_train(cfg, run, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def test_retries_are_bounded_and_the_failure_is_recorded(tmp_path):
    path = standin_study(tmp_path, [(1, 1)])
    study = load_study(path, ["resources.retries=1"])
    out = tmp_path / "runs"
    stages = st.StageFunctions(train=always_crash_train, evaluate=note_eval)
    outcome = run_study(study, out, executor="ray", stages=stages, console=quiet())
    assert not outcome.ok
    rows = stage_rows(out / "results.db")
    train = next(r for (_, stage), r in rows.items() if stage == "train")
    assert train["status"] == "failed" and "system failure" in train["error"] and train["attempts"] == 2
    evaluation = next(r for (_, stage), r in rows.items() if stage == "eval")
    assert evaluation["status"] == "failed" and evaluation["error"].startswith("not run")


def raising_train(cfg, run, **kwargs):
    raise ValueError("a bad setting in this cell")


def test_a_python_exception_is_the_cells_own_failure_and_not_retried(tmp_path):
    study = load_study(standin_study(tmp_path, [(1, 1), (1, 1)]))
    out = tmp_path / "runs"
    calls = tmp_path / "calls"

    def train(cfg, run, **kwargs):
        with open(calls, "a") as f:
            f.write(f"{cfg.lora.r}\n")
        if cfg.lora.r == 1:
            raise ValueError("a bad setting in this cell")
        return note_train(cfg, run, **kwargs)

    outcome = run_study(study, out, executor="ray", stages=st.StageFunctions(train=train, evaluate=note_eval),
                        console=quiet())
    assert sorted(calls.read_text().split()) == ["1", "2"]        # once each: no retry
    failed = {stage: error for _, stage, error in outcome.tally.failed}
    assert "ValueError: a bad setting in this cell" in failed["train"]
    assert outcome.statuses["done"] == 2


def test_storage_on_s3(tmp_path, s3_server):
    import fsspec

    study = load_study(standin_study(tmp_path, [(1, 1)]))
    out = tmp_path / "runs"
    uri = "s3://studies/standin"
    assert run_study(study, out, executor="ray", stages=STANDINS, console=quiet(), storage=uri).ok
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    cell = study.cells[0].id
    assert fs.exists(f"studies/standin/{cell}/train/summary.json")
    assert fs.exists(f"studies/standin/{cell}/resolved-config.yaml")
    assert (out / cell / "train" / "summary.json").exists()          # small results mirrored for the report,
    assert (out / cell / "eval").is_dir() and not (out / cell / "train" / "adapter").exists()   # never weights
    # a store moved aside is rebuilt from the markers on S3
    (out / "results.db").rename(out / "results.db.bad")
    for suffix in ("-wal", "-shm"):
        Path(f"{out / 'results.db'}{suffix}").unlink(missing_ok=True)
    outcome = run_study(study, out, executor="ray", stages=STANDINS, console=quiet(), storage=uri)
    assert outcome.ok and outcome.tally.recovered == 2 and outcome.tally.ran == 0


def test_gpus_flag_runs_units_concurrently_through_ray(tmp_path, tiny_llama_dir):
    """`--gpus 0,1` is the Ray executor (on a running instance here; a fresh local one with those GPUs otherwise)."""
    text = tiny_study(tiny_llama_dir, "  - method: zero_shot\n  - method: few_shot\n", limit=4)
    study = load_study(write_study(tmp_path, text))
    out = tmp_path / "runs"
    outcome = run_study(study, out, gpus=["0", "1"], console=quiet())
    assert outcome.ok and outcome.tally.ran == 2
    rows = stage_rows(out / "results.db")
    assert len({r["pid"] for r in rows.values()}) == 2 and os.getpid() not in {r["pid"] for r in rows.values()}
    assert {r["gpus"] for r in rows.values()} == {"0", "1"}


def test_ctrl_c_cancels_running_tasks_and_leaves_them_resumable(tmp_path, tiny_llama_dir):
    """The real CLI on its own local Ray instance: SIGINT to the driver mid-training. (Resuming from the step
    checkpoint after a retry is test_study_cluster.py's lost-node test.)"""
    import subprocess

    text = tiny_study(tiny_llama_dir, "  - method: lora\n    training: {max_steps: 3000, save_steps: 3, epochs: 1}\n",
                      limit=4)
    path = write_study(tmp_path, text)
    out = tmp_path / "runs"
    cell = load_study(path).cells[0].id
    command = [sys.executable, "-m", "tunebench.cli", "run", str(path), "--out", str(out), "--executor", "ray"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoints = out / cell / "train" / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("checkpoint-*")) and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert driver.poll() is None, driver.communicate()[0]
    driver.send_signal(signal.SIGINT)
    output = driver.communicate(timeout=180)[0]
    assert driver.returncode == 130, output
    row = stage_rows(out / "results.db")[(cell, "train")]
    assert row["status"] == "pending" and row["error"] == "interrupted", output
    assert list(checkpoints.glob("checkpoint-*")) and not (out / cell / "train" / "summary.json").exists()
    assert "interrupted" in output and "Traceback" not in output


def test_a_load_test_unit_gets_its_node_alone(tmp_path):
    from tunebench.study.executor.ray_cluster import RayExecutor
    from tunebench.study.plan import plan
    from tunebench.study.runner import Driver, RunOptions
    from tunebench.study.storage import Storage
    from tunebench.study.store import Store

    study = load_study(standin_study(tmp_path, [(1, 1)]), ["loadtest.enabled=true"])
    executor = RayExecutor()
    with Store.open(tmp_path) as store:
        driver = Driver(tmp_path, store, Storage(str(tmp_path)), executor, quiet(), RunOptions())
        task = driver.task_for(plan(study.cells)[0], "[1/1]", 1)
    assert (task.resources.cpus, task.resources.gpus) == (4.0, 2)      # the whole (only) node of this instance
