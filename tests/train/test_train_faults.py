"""Faults around a real `tunebench train` (issue 18): SIGTERM is Ctrl-C (a checkpoint at the next step boundary,
a message, exit 143, a resume that ends with the uninterrupted weights, also through torchrun); a second run on
the same directory is refused; a full disk gives a clear message, keeps the last checkpoint and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunebench.config.study import load_study, single_cell
from tunebench.rundir import RunDir
from tunebench.train import train_cell
from tunebench.train.checkpoints import step_checkpoints

STUDY = """name: sigterm
defaults:
  model: {{name: {model}}}
  method: lora
  data: {{source: "builtin:classification", task: classification, train_count: 32}}
  training: {{epochs: 2, tokens_per_batch: 512, max_seq_len: 256, save_steps: 2}}
"""
# The real `tunebench train` command, each step slowed so that the signal lands mid-run.
SLOW_CLI = """
import os, sys, time
from transformers import TrainerCallback
import tunebench.train.engine as engine

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(float(os.environ.get("SLOW_STEP_S", "0.1")))

built = engine.build_trainer
def slowed(*args, **kwargs):
    trainer, interrupt = built(*args, **kwargs)
    trainer.add_callback(Slow())
    return trainer, interrupt

engine.build_trainer = slowed
from tunebench.cli import main
main(sys.argv[1:])
"""
# `tunebench train --gpus 0,1`'s parent: torchrun as a child, SIGTERM handed on to it.
PARENT = """
import sys
from tunebench.train.signals import run_forwarding_sigterm
code, terminated = run_forwarding_sigterm(sys.argv[1:], None)
print(f"child exit {code}, terminated {terminated}", flush=True)
sys.exit(143 if terminated else code)
"""


@pytest.fixture(scope="module")
def reference(tiny_neox_dir, tmp_path_factory) -> tuple[Path, dict]:
    """The study file and the adapter its uninterrupted run ends with."""
    root = tmp_path_factory.mktemp("sigterm")
    study = root / "study.yaml"
    study.write_text(STUDY.format(model=tiny_neox_dir))
    cell = single_cell(load_study(study), "train")
    run = RunDir.for_cell(root / "reference", cell.id)
    train_cell(cell, run, progress=False)
    return study, load_file(run.adapter / "adapter_model.safetensors")


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the run ended before the moment the test waits for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def stop_with_sigterm(command: list[str], run: RunDir, tmp_path: Path) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=tmp_path)
    try:
        wait_for(lambda: (run.checkpoints / "checkpoint-2").exists(), process)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    return process.returncode, output


def assert_resumes_to(reference: dict, study: Path, out: Path, run: RunDir, cli) -> None:
    assert not (run.train / "summary.json").exists()
    resumed = cli("train", str(study), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    weights = load_file(run.adapter / "adapter_model.safetensors")
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_143_and_resumes_bit_identically(reference, tmp_path, cli):
    study, reference = reference
    cell = single_cell(load_study(study), "train")
    out = tmp_path / "out"
    run = RunDir.for_cell(out, cell.id)
    code, output = stop_with_sigterm([sys.executable, "-c", SLOW_CLI, "train", str(study), "--out", str(out)],
                                     run, tmp_path)
    assert code == 143, output
    assert "terminated (SIGTERM): stopped at step" in output and "--resume" in output, output
    assert "Traceback" not in output
    stopped = int(output.split("stopped at step ")[1].split(",")[0])
    latest = step_checkpoints(run.checkpoints)[-1]
    assert latest.name == f"checkpoint-{stopped}" and (latest / "optimizer.pt").exists()
    assert_resumes_to(reference, study, out, run, cli)


@pytest.mark.slow
def test_sigterm_to_the_parent_of_torchrun_reaches_the_worker(reference, tmp_path):
    """On CPU (gloo), one worker: the parent hands SIGTERM to torchrun, whose agent hands it to the worker."""
    study, _ = reference
    cell = single_cell(load_study(study), "train")
    out = tmp_path / "out"
    run = RunDir.for_cell(out, cell.id)
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(script),
                "train", str(study), "--out", str(out)]
    code, output = stop_with_sigterm([sys.executable, "-c", PARENT, *torchrun], run, tmp_path)
    assert code == 143, output
    assert "terminated (SIGTERM): stopped at step" in output and "child exit" in output, output
    stopped = int(output.split("stopped at step ")[1].split(",")[0])
    latest = step_checkpoints(run.checkpoints)[-1]  # resuming from it is the test above
    assert latest.name == f"checkpoint-{stopped}" and (latest / "optimizer.pt").exists()


@pytest.mark.slow
def test_a_second_train_on_the_same_run_directory_is_refused_naming_the_holder(reference, tmp_path, cli):
    """Issue 18, item 3: the run directory's lock; the second command exits 2 with the first one's pid."""
    study, _ = reference
    cell = single_cell(load_study(study), "train")
    out = tmp_path / "out"
    run = RunDir.for_cell(out, cell.id)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "SLOW_STEP_S": "1"}  # outlasts the second
    first = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "train", str(study), "--out", str(out)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (run.checkpoints / "checkpoint-2").exists(), first)
        second = cli("train", str(study), "--out", str(out), "--resume")
        assert first.poll() is None, "the first run ended before the second was refused"
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert second.returncode == 2, second.stderr
    assert f"is already being trained by another tunebench process (pid {first.pid})" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 143, stderr  # the first run was not disturbed


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_much_space(reference, small_disk, fill_disk, cli):
    study, reference = reference
    cell = single_cell(load_study(study), "train")
    out = small_disk / "out"
    run = RunDir.for_cell(out, cell.id)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "300", "SLOW_STEP_S": "0.3"}
    process = subprocess.Popen([sys.executable, "-c", SLOW_CLI, "train", str(study), "--out", str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (run.checkpoints / "checkpoint-2").exists(), process)
        filler = fill_disk(small_disk)
        output, _ = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 2, output
    said = " ".join(output.split())  # the message may be wrapped to the terminal's width
    assert f"no space left on {small_disk} while writing" in said and "Traceback" not in said, output
    assert "bytes free, about" in said and "KiB needed); nothing half-written was left" in said, output
    assert "intact" in said and "--resume" in said, output
    assert not [p for p in run.checkpoints.rglob("*") if p.name.startswith(".partial")]
    latest = step_checkpoints(run.checkpoints)[-1]
    assert (latest / "optimizer.pt").exists() and (latest / "adapter_model.safetensors").exists()
    filler.unlink()
    assert_resumes_to(reference, study, out, run, cli)


def test_a_resume_logs_each_replayed_step_once(reference, tmp_path, cli):
    """Issue 18, item 6: the steps after the checkpoint were logged by the stopped run and again by the resume."""
    import shutil

    study, weights = reference
    cell = single_cell(load_study(study), "train")
    source = RunDir.for_cell(study.parent / "reference", cell.id)
    run = RunDir.for_cell(tmp_path / "out", cell.id)
    shutil.copytree(source.path, run.path)
    (run.train / "summary.json").unlink()
    shutil.rmtree(run.adapter)
    _, removed = step_checkpoints(run.checkpoints)[-2:]
    shutil.rmtree(removed)  # as if killed after the last steps were logged, before their checkpoint
    with (run.train / "metrics.jsonl").open("a") as f:
        f.write('{"step": 99, "lo')  # and a line torn by the kill
    train_cell(cell, run, resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (run.train / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" not in line]
    assert steps == sorted(set(steps)) and steps[-1] == int(removed.name.split("-")[1]), steps
    resumed = load_file(run.adapter / "adapter_model.safetensors")
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)


def test_resume_after_a_config_edit_lists_what_changed(reference, cli):
    study, _ = reference
    result = cli("train", str(study), "--out", str(study.parent / "reference"), "--resume", "--set", "lora.r=4",
                 "--set", "training.learning_rate=0.001")
    said = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert "no checkpoint for this configuration; the closest run with one" in said, said
    assert "lora.r: 8 -> 4" in said and "training.learning_rate: None -> 0.001" in said, said


# The training stage called in-process by a caller that turns SIGTERM into KeyboardInterrupt (the study runner
# and its workers do): training's own handler takes over for the loop, so the step in progress is not lost.
IN_PROCESS = """
import signal, sys, time
from pathlib import Path
from transformers import TrainerCallback
from tunebench.config.study import load_study, single_cell
from tunebench.rundir import RunDir
from tunebench.train.engine import TrainingInterrupted, train_cell

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(0.1)

def caller_handler(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, caller_handler)
cell = single_cell(load_study(sys.argv[1]), "train")
try:
    train_cell(cell, RunDir.for_cell(Path(sys.argv[2]), cell.id), progress=False, callbacks=[Slow()])
except TrainingInterrupted as stop:
    restored = signal.getsignal(signal.SIGTERM) is caller_handler
    print(f"stopped at step {stop.step} by {stop.signal_name}, caller's handler restored: {restored}", flush=True)
    sys.exit(143)
"""


@pytest.mark.slow
def test_sigterm_during_in_process_training_checkpoints_the_step(reference, tmp_path):
    study, _ = reference
    cell = single_cell(load_study(study), "train")
    run = RunDir.for_cell(tmp_path / "out", cell.id)
    code, output = stop_with_sigterm([sys.executable, "-c", IN_PROCESS, str(study), str(tmp_path / "out")], run,
                                     tmp_path)
    assert code == 143, output
    assert "by SIGTERM, caller's handler restored: True" in output, output
    stopped = int(output.split("stopped at step ")[1].split(" ")[0])
    assert step_checkpoints(run.checkpoints)[-1].name == f"checkpoint-{stopped}"
