"""Crash safety for real: a run killed with SIGKILL resumes to the same weights; Ctrl-C checkpoints and stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tunebench.config.study import load_study, single_cell
from tunebench.rundir import RunDir
from tunebench.train import train_cell
from tunebench.train.checkpoints import step_checkpoints

STUDY = """name: resume
defaults:
  model: {{name: {model}}}
  method: lora
  data: {{source: "builtin:classification", task: classification, train_count: 32}}
  training: {{epochs: 3, tokens_per_batch: 512, max_seq_len: 256, save_steps: 3{extra}}}
"""
# The run to kill: the same cell through the library, slowed down so the kill lands mid-run.
SLOW_RUN = """
import sys, time
from pathlib import Path
from transformers import TrainerCallback
from tunebench.config.study import load_study, single_cell
from tunebench.rundir import RunDir
from tunebench.train import train_cell

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.05)

cell = single_cell(load_study(sys.argv[1]), "train")
train_cell(cell, RunDir.for_cell(Path(sys.argv[2]), cell.id), progress=False, callbacks=[Slow()])
"""


def write_study(tmp_path: Path, model: Path, extra: str = "") -> Path:
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(model=model, extra=extra))
    return study


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(tiny_neox_dir, tmp_path, cli):
    study = write_study(tmp_path, tiny_neox_dir)
    cell = single_cell(load_study(study), "train")
    reference = train_cell(cell, RunDir.for_cell(tmp_path / "a", cell.id), progress=False)

    run = RunDir.for_cell(tmp_path / "b", cell.id)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(study), str(tmp_path / "b")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def inside_the_second_epoch() -> bool:  # a step checkpoint past the end of epoch 1
        epoch1 = run.checkpoints / "epoch-1" / "epoch.json"
        if not epoch1.exists():
            return False
        end = json.loads(epoch1.read_text())["step"]
        return any(int(p.name.split("-")[1]) > end for p in step_checkpoints(run.checkpoints))

    try:
        wait_for(inside_the_second_epoch, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert not (run.train / "summary.json").exists()

    resumed = cli("train", str(study), "--out", str(tmp_path / "b"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((run.train / "summary.json").read_text())
    started_at = int(Path(summary["resumed_from"]).name.split("-")[1])
    assert started_at > json.loads((run.checkpoints / "epoch-1" / "epoch.json").read_text())["step"] > 0
    assert summary["steps"] == reference["steps"]
    assert (summary["tokens_seen"], summary["examples_seen"]) == (reference["tokens_seen"], reference["examples_seen"])
    a = load_file(RunDir.for_cell(tmp_path / "a", cell.id).adapter / "adapter_model.safetensors")
    b = load_file(run.adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(tiny_neox_dir, tmp_path):
    study = write_study(tmp_path, tiny_neox_dir, extra=", max_steps: 100000")
    cell = single_cell(load_study(study), "train")
    run = RunDir.for_cell(tmp_path / "out", cell.id)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "tunebench.cli", "train", str(study), "--out",
                                str(tmp_path / "out")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: (run.checkpoints / "checkpoint-3").exists(), process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted: stopped at step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    stopped = int(stderr.split("stopped at step ")[1].split(",")[0])
    latest = step_checkpoints(run.checkpoints)[-1]
    assert latest.name == f"checkpoint-{stopped}" and (latest / "optimizer.pt").exists()
    assert not any(p.name.startswith("epoch-") for p in run.checkpoints.iterdir())  # stopped mid-epoch
    assert not (run.train / "summary.json").exists()
