"""What a unit's task does wherever it runs: the stages the driver asked for, each reported back by value.

    UnitTask ─ workspace (the storage, or scratch pulled from it) ─ for each StageWork:
        StageStarted ─ train | share | eval | loadtest ─ record from the stage's files ─ upload ─ StageFinished

The task never touches results.db: the driver records what the StageFinished events carry. A Python
exception is the cell's own failure (recorded with the tail of its traceback, the unit goes on); Ctrl-C or a
cancel (SIGINT/SIGTERM, KeyboardInterrupt) stops the unit after the running stage wrote its checkpoint; a
stage process killed by a signal raises SystemFailure, which the executor retries.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError
from tunebench.rundir import RunDir, read_json, write_atomic
from tunebench.study import stages as st
from tunebench.study.executor import (
    EpochMetrics,
    Progress,
    StageFinished,
    StageStarted,
    StageWork,
    SystemFailure,
    UnitResult,
    UnitTask,
)
from tunebench.study.storage import Storage

PROGRESS_EVERY_S = 2.0
LOG_TAIL_LINES = 15


@dataclass
class TaskContext:
    emit: Callable[..., None]                 # emit(event, important=False)
    should_stop: Callable[[], bool] = lambda: False
    attempt: int = 1                          # > 1: the executor retried the unit after a system failure


# ---------------------------------------------------------------- helpers shared with the driver


def is_interruption(err: BaseException) -> bool:
    """Ctrl-C during training ends in the trainer's own exception, after it saved a checkpoint."""
    engine = sys.modules.get("tunebench.train.engine")
    return engine is not None and isinstance(err, engine.TrainingInterrupted)


def has_step_checkpoint(run: RunDir) -> bool:
    return run.checkpoints.is_dir() and any(p.name.split("-", 1)[1].isdigit()
                                            for p in run.checkpoints.glob("checkpoint-*") if p.is_dir())


def describe_error(err: BaseException) -> str:
    if isinstance(err, UserError):
        return f"{err.problem} (fix: {err.fix})" if err.fix else err.problem
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    name = type(err).__name__
    if "out of memory" in str(err).lower() or name == "OutOfMemoryError":
        return f"out of memory ({name}: {text[:300]})"
    return f"{name}: {text[:300]}" if text else name


def free_memory() -> None:
    """After a failed cell, give back what it held so the next one starts clean."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def marker(stage: str, cfg: CellConfig, run: RunDir) -> Path:
    if stage in ("train", "share"):
        return st.train_marker(run)
    return st.eval_marker(cfg, run) if stage == "eval" else st.loadtest_marker(run)


def portable(record: st.Record, root: Path) -> st.Record:
    """Artifact paths relative to the storage root, the same on every node and in results.db."""
    def rel(path: Path) -> Path:
        try:
            return Path(os.path.relpath(Path(path).absolute(), root.absolute()))
        except ValueError:
            return Path(path)

    return replace(record, artifacts={kind: rel(path) for kind, path in record.artifacts.items()})


# ---------------------------------------------------------------- callbacks into training


def training_callbacks(task: UnitTask, cell_id: str, context: TaskContext, run: RunDir,
                       storage: Storage, root: Path) -> list[Any]:
    """Progress and per-epoch metrics to the driver, the driver's stop, and checkpoints uploaded as written.

    Duck-typed for transformers' CallbackHandler (it calls `on_<event>` by name): importing transformers here
    would cost every task seconds, also those whose stage is not a Trainer."""

    class Report:
        last = 0.0

        def __getattr__(self, name: str) -> Any:
            if name.startswith("on_"):
                return lambda *args, **kwargs: None
            raise AttributeError(name)

        def on_step_end(self, args, state, control, **kwargs):
            now = time.monotonic()
            if now - self.last >= PROGRESS_EVERY_S:
                self.last = now
                context.emit(Progress(task.unit_id, cell_id, "train", state.global_step, state.max_steps))
            if context.should_stop():
                control.should_training_stop = True
                control.should_save = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            values = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}
            context.emit(EpochMetrics(task.unit_id, cell_id, round(state.epoch or 0), state.global_step, values),
                         important=True)

        def on_save(self, args, state, control, **kwargs):
            if not storage.local and state.is_world_process_zero:
                storage.push(root, "", only=[os.path.relpath(run.train, root)])

    return [Report()]


# ---------------------------------------------------------------- one unit


def unit_dirs(task: UnitTask) -> list[str]:
    return sorted(task.configs)


def run_unit_task(task: UnitTask, context: TaskContext, stages: st.StageFunctions | None = None) -> UnitResult:
    stages = stages or st.real_stages()
    storage = Storage(task.storage)
    result = UnitResult(task.unit_id)
    configs = {cid: CellConfig.model_validate(data) for cid, data in task.configs.items()}
    untrained: set[str] = set()   # cells whose model is missing: its training (or the shared run's) failed
    with storage.workspace(unit_dirs(task)) as root:
        if not storage.local:   # on a local path the driver wrote them; --run DIR reads them from there
            for cid, cfg in configs.items():
                RunDir.for_cell(root, cid).write_config(cfg)
        for work in task.work:
            cfg, run = configs[work.cell_id], RunDir.for_cell(root, work.cell_id)
            blocked = blocked_by(work, task, untrained)
            if blocked:
                untrained.add(work.cell_id)
                stage = "train" if work.stage == "share" else work.stage
                _report(result, context, StageFinished(task.unit_id, work.cell_id, stage, "failed", error=blocked))
                continue
            finished = run_stage(task, work, cfg, run, root, storage, stages, context)
            _report(result, context, finished)
            if finished.status == "interrupted":
                result.interrupted = True
                break
            if finished.status == "failed" and work.stage in ("train", "share"):
                untrained.add(work.cell_id)
        for cid, cfg in configs.items():
            run = RunDir.for_cell(root, cid)
            prov = provenance(cfg, run)
            if prov is not None:
                result.provenance[cid] = prov
                storage.push(root, "", only=[os.path.relpath(run.provenance_file, root)])
    return result


def blocked_by(work: StageWork, task: UnitTask, untrained: set[str]) -> str | None:
    if work.stage == "share" and task.trainer in untrained:
        return f"not run: the training run of {task.trainer} failed"
    if work.stage in ("eval", "loadtest") and work.cell_id in untrained:
        return "not run: its training failed"
    return None


def _report(result: UnitResult, context: TaskContext, finished: StageFinished) -> None:
    result.finished.append(finished)
    context.emit(finished, important=True)


def provenance(cfg: CellConfig, run: RunDir) -> dict[str, Any] | None:
    if not run.provenance_file.exists():
        if not any(run.path.joinpath(d).exists() for d in ("eval", "train")):
            return None
        run.write_provenance(cfg, data_hash=st.data_hash(cfg, run))
    return read_json(run.provenance_file)


def run_stage(task: UnitTask, work: StageWork, cfg: CellConfig, run: RunDir, root: Path, storage: Storage,
              stages: st.StageFunctions, context: TaskContext) -> StageFinished:
    stage = "train" if work.stage == "share" else work.stage
    retrying = work.retrying and context.attempt == 1   # a retried attempt keeps the first attempt's checkpoints
    if context.attempt > 1 and marker(work.stage, cfg, run).exists():
        # finished by an earlier attempt of this unit before its process or node died
        record = record_of(work, cfg, run, root, task, None)
        return StageFinished(task.unit_id, work.cell_id, stage, "done", record=portable(record, root))
    resume = work.stage == "train" and not retrying and has_step_checkpoint(run)
    note = "resuming from its last checkpoint" if resume else "again: it failed" if retrying else ""
    work = replace(work, retrying=retrying)
    context.emit(StageStarted(task.unit_id, work.cell_id, stage, "shared" if work.stage == "share" else note),
                 important=True)
    start, cpu = time.perf_counter(), time.process_time()
    stopped = False
    try:
        if work.stage == "train":
            stopped = train(task, work, cfg, run, root, storage, stages, context, resume)
        elif work.stage == "share":
            trainer = task.trainer or work.cell_id
            st.link_checkpoint(run, RunDir.for_cell(root, trainer), task.epoch_of[work.cell_id],
                               CellConfig.model_validate(task.configs[trainer]))
        elif work.stage == "eval":
            stages.evaluate(cfg, run, progress=task.progress)
        else:
            if stages.loadtest is None:
                raise UserError("this installation has no load-test stage (tunebench.loadtest)",
                                "pip install 'tunebench[serve]'")
            stages.loadtest(cfg, run, st.model_ref(cfg, run), progress=task.progress)
        seconds = time.perf_counter() - start
        record = record_of(work, cfg, run, root, task, seconds)
    except KeyboardInterrupt:
        return StageFinished(task.unit_id, work.cell_id, stage, "interrupted", error="interrupted",
                             seconds=time.perf_counter() - start)
    except SystemFailure:
        raise
    except Exception as err:  # the cell's own failure: recorded, and the unit goes on
        if is_interruption(err):
            return StageFinished(task.unit_id, work.cell_id, stage, "interrupted", error="interrupted",
                                 seconds=time.perf_counter() - start)
        text = "".join(traceback.format_exception(err))
        log = run.path / f"{stage}-error.log"
        write_atomic(log, text)
        storage.push(root, "", only=[os.path.relpath(log, root)])
        free_memory()
        tail = "\n".join(text.rstrip().splitlines()[-LOG_TAIL_LINES:])
        return StageFinished(task.unit_id, work.cell_id, stage, "failed",
                             error=f"{describe_error(err)} (traceback: {work.cell_id}/{log.name})", log_tail=tail,
                             seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu)
    # the stage's files, marker last, before the driver hears it is done
    storage.push(root, "", only=[os.path.relpath(run.path, root)])
    return StageFinished(task.unit_id, work.cell_id, stage, "stopped" if stopped else "done",
                         record=portable(record, root), seconds=seconds, cpu_seconds=time.process_time() - cpu)


def record_of(work: StageWork, cfg: CellConfig, run: RunDir, root: Path, task: UnitTask,
              seconds: float | None) -> st.Record:
    if work.stage == "train":
        return st.train_record(cfg, run, seconds)
    if work.stage == "share":
        return st.shared_train_record(cfg, run, task.trainer or work.cell_id)
    if work.stage == "eval":
        return st.eval_record(cfg, run, seconds)
    return st.loadtest_record(cfg, run, seconds, root)


def train(task: UnitTask, work: StageWork, cfg: CellConfig, run: RunDir, root: Path, storage: Storage,
          stages: st.StageFunctions, context: TaskContext, resume: bool) -> bool:
    """Train in this process, or under torchrun on the N GPUs the executor assigned; True when told to stop."""
    if task.resources.gpus > 1 and stages.train_distributed is not None:
        stages.train_distributed(cfg, run, gpus=task.resources.gpus, resume=resume, force=work.retrying)
        storage.push(root, "", only=[os.path.relpath(run.train, root)])
        return False
    stopped = False

    def should_stop() -> bool:
        nonlocal stopped
        stopped = stopped or context.should_stop()
        return stopped

    callbacks = training_callbacks(task, work.cell_id, TaskContext(context.emit, should_stop), run, storage, root)
    stages.train(cfg, run, resume=resume, force=work.retrying, progress=task.progress, callbacks=callbacks)
    return stopped


# ---------------------------------------------------------------- an N-GPU cell: torchrun on the assigned GPUs


def train_on_gpus(cfg: CellConfig, run: RunDir, *, gpus: int, resume: bool, force: bool) -> None:
    """`tunebench train` under torchrun, one process per GPU of CUDA_VISIBLE_DEVICES (set by the executor).

    Ctrl-C or a cancel forwards SIGTERM to torchrun, which passes it to every rank (each checkpoints at its
    next step); a rank killed by a signal is a system failure, retried from the last step checkpoint."""
    cell_id, root = run.path.name, run.path.parent
    study = {"name": "unit", "defaults": cfg.model_dump(mode="json"), "experiments": [{}]}
    run.path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=run.path, prefix=".cell-", delete=False) as f:
        yaml.safe_dump(study, f, sort_keys=False)
    env = {**os.environ, "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "tunebench.cli", "train", f.name, "--out", str(root),
               *(["--resume"] if resume else []), *(["--force"] if force else [])]
    log = run.path / "train.log"
    with log.open("a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = process.wait()
        except BaseException:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
            raise
        finally:
            Path(f.name).unlink(missing_ok=True)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
    if code == 130 or code == 143:
        raise KeyboardInterrupt
    if code != 0:
        if code < 0 or "exitcode  : -" in tail or "Signals." in tail:
            raise SystemFailure(f"a torchrun rank of {cell_id} was killed by a signal (log: {log.name})")
        raise RuntimeError(f"torchrun training of {cell_id} failed with exit status {code}:\n{tail}")
    if not st.train_marker(run).exists():
        raise RuntimeError(f"torchrun training of {cell_id} ended without writing {st.train_marker(run)}")

