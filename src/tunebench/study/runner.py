"""The study runner: every cell's stages, each recorded in the results store, resumable at any point.

    tunebench run STUDY.yaml
      check the study directory is writable ─ lock it ─ open results.db
      for each unit (a training run and its evaluations, or one prompting evaluation):
          train (lora/qlora/full) ─ evaluate ─ serve + load test (when loadtest.enabled)

A stage recorded done (and whose files are there) is skipped; one left 'running' by a killed runner is
redone (training resumes from its last checkpoint); a failed one is kept failed unless --retry-failed. A
stage that raises (out of memory included) is recorded failed with its error and the study goes on. A stage
whose files exist but which the store does not know (a store moved aside) is recorded again from its files.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunebench.config.study import Cell, Study
from tunebench.errors import UserError
from tunebench.rundir import RunDir, read_json, write_atomic
from tunebench.study import stages as st
from tunebench.study.lock import StudyLock
from tunebench.study.plan import Unit, with_trainers
from tunebench.study.select import check_size, select_cells
from tunebench.study.store import StageRow, Store

# A stage whose runner died this many times with no error to show (SIGKILL, the kernel's OOM killer) is
# marked failed instead of being retried forever.
MAX_SILENT_DEATHS = 2


@dataclass
class RunOptions:
    retry_failed: bool = False
    progress: bool = True


@dataclass
class Tally:
    ran: int = 0
    reused: int = 0
    recovered: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)   # (cell id, stage, error)


@dataclass
class StudyOutcome:
    study_dir: Path
    tally: Tally
    statuses: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.statuses.get("failed", 0) == 0 and self.statuses.get("pending", 0) == 0


# ---------------------------------------------------------------- the study directory


def prepare_study_dir(study_dir: Path) -> None:
    """Fail before any work when the study directory cannot be written."""
    if study_dir.exists() and not study_dir.is_dir():
        raise UserError(f"the study directory {study_dir} is a file", "give a directory with --out DIR")
    probe = study_dir / f".write-test-{os.getpid()}"
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to the study directory {study_dir}: {err.strerror or err}",
                        "give a writable directory with --out DIR, or fix the permissions of that one") from None
    for name in ("results.db", ".lock"):
        path = study_dir / name
        if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
            raise UserError(f"{path} is read-only", f"make it writable (chmod u+w {path}) or use --out DIR")


def write_config_if_changed(cell: Cell, run: RunDir) -> None:
    """Write resolved-config.yaml, leaving an identical one (and its mtime) untouched."""
    import yaml

    text = yaml.safe_dump(cell.config.model_dump(mode="json"), sort_keys=False)
    if not run.config_file.exists() or run.config_file.read_text() != text:
        write_atomic(run.config_file, text)


# ---------------------------------------------------------------- one unit


class Runner:
    """Runs units of one study against its store. Used in-process, and by each worker with --gpus."""

    def __init__(self, study_dir: Path, store: Store, stages: st.StageFunctions, *, console: Console,
                 options: RunOptions | None = None) -> None:
        self.study_dir = study_dir
        self.store = store
        self.stages = stages
        self.console = console
        self.options = options or RunOptions()
        self.tally = Tally()

    def run(self, cell: Cell) -> RunDir:
        return RunDir.for_cell(self.study_dir, cell.id)

    def run_unit(self, unit: Unit, position: str = "") -> None:
        trained = True
        if unit.trainer is not None:
            trained = self.train(unit.trainer, position)
        for cell in unit.cells:
            ready = trained
            if unit.trainer is not None and cell.id in unit.epoch_of:
                if ready:
                    ready = self.share_training(cell, unit.trainer, unit.epoch_of[cell.id])
                else:
                    self.blocked(cell, "train", f"not run: the training run of {unit.trainer.id} failed")
            if not ready:
                self.blocked(cell, "eval", "not run: its training failed")
                continue
            if self.evaluate(cell, position) and cell.config.loadtest.enabled:
                self.loadtest(cell, position)
            self.record_provenance(cell)

    # ------------------------------------------------------------ the stages

    def train(self, cell: Cell, position: str) -> bool:
        run = self.run(cell)

        def action(retrying: bool) -> None:
            # an interrupted run continues from its last checkpoint; a failed one starts over
            resume = not retrying and has_step_checkpoint(run)
            self.stages.train(cell.config, run, resume=resume, force=retrying, progress=self.options.progress)

        return self.execute(cell, "train", st.train_marker(run), action,
                            lambda seconds: st.train_record(cell.config, run, seconds), position)

    def evaluate(self, cell: Cell, position: str) -> bool:
        run = self.run(cell)

        def action(retrying: bool) -> None:
            self.stages.evaluate(cell.config, run, progress=self.options.progress)

        return self.execute(cell, "eval", st.eval_marker(cell.config, run), action,
                            lambda seconds: st.eval_record(cell.config, run, seconds), position)

    def loadtest(self, cell: Cell, position: str) -> bool:
        run, serve_and_loadtest = self.run(cell), self.stages.loadtest
        if serve_and_loadtest is None:
            self.blocked(cell, "loadtest", "not run: this installation has no load-test stage (tunebench.loadtest)")
            return False

        def action(retrying: bool) -> None:
            serve_and_loadtest(cell.config, run, st.model_ref(cell.config, run), progress=self.options.progress)

        return self.execute(cell, "loadtest", st.loadtest_marker(run), action,
                            lambda seconds: st.loadtest_record(cell.config, run, seconds, self.study_dir), position)

    def share_training(self, cell: Cell, trainer: Cell, epoch: int) -> bool:
        """A cell of an epochs group: its model is the epoch-N checkpoint of the group's training run."""
        run, source = self.run(cell), self.run(trainer)

        def action(retrying: bool) -> None:
            st.link_checkpoint(run, source, epoch, trainer.config)

        return self.execute(cell, "train", st.train_marker(run), action,
                            lambda seconds: st.shared_train_record(cell.config, run, trainer.id),
                            position="", quiet=True)

    # ------------------------------------------------------------ running one stage

    def execute(self, cell: Cell, stage: str, marker: Path, action: Callable[[bool], Any],
                record: Callable[[float | None], st.Record], position: str, quiet: bool = False) -> bool:
        """Run one stage unless already done; True when its results are in the store."""
        row = self.store.stage(cell.id, stage)
        plan = self.decide(cell, stage, row, marker)
        if plan == "reuse":
            self.tally.reused += 1
            return True
        if plan == "keep-failed":
            kept = self.store.stage(cell.id, stage)
            self.tally.failed.append((cell.id, stage, kept.error if kept and kept.error else "failed"))
            return False
        if plan == "recover" and self.recover(cell, stage, record):
            return True
        interrupted = row is not None and row.status == "running"
        retrying = row is not None and row.status == "failed"
        if not quiet:
            again = " (again: it was interrupted)" if interrupted else " (retrying)" if retrying else ""
            self.console.print(f"[bold]{position}[/bold] {cell.id} · {stage}{again}")
        self.store.stage_started(cell.id, stage)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            action(retrying)
            result = record(time.perf_counter() - start)
        except KeyboardInterrupt:
            self.store.stage_pending(cell.id, stage, "interrupted")
            raise
        except Exception as err:  # any failure of one cell is recorded, and the study goes on
            if is_interruption(err):
                self.store.stage_pending(cell.id, stage, "interrupted")
                raise KeyboardInterrupt from err
            self.fail(cell, stage, err, time.perf_counter() - start)
            return False
        self.store.stage_done(cell.id, stage, seconds=result.seconds, metrics=result.metrics, cost=result.cost,
                              artifacts=result.artifacts, detail=result.detail, inference=result.inference)
        self.tally.ran += 1
        if not quiet:
            # CPU time (all threads) beside wall time: on a shared machine the wall time alone says little
            self.console.print(f"  [green]done[/green] {stage} in {time.perf_counter() - start:.1f} s "
                               f"(CPU {time.process_time() - cpu_start:.1f} s)"
                               + (f" · {st.headline(result)}" if st.headline(result) else ""))
        return True

    def decide(self, cell: Cell, stage: str, row: StageRow | None, marker: Path) -> str:
        status = row.status if row else "pending"
        if status == "done":
            if marker.exists():
                return "reuse"
            self.console.print(f"[yellow]{cell.id} · {stage} is recorded done but {marker} is gone; redoing it")
            return "run"
        if status == "failed":
            return "run" if self.options.retry_failed else "keep-failed"
        if status in ("pending", "running") and marker.exists():
            # the stage wrote its results (its marker file comes last) but the store never heard: a store
            # moved aside, or a runner killed between the two writes
            return "recover"
        if status == "running" and row is not None and row.attempts >= MAX_SILENT_DEATHS:
            if self.options.retry_failed:
                return "run"
            error = (f"the process running it died {row.attempts} times without an error (killed, e.g. by the "
                     "system when out of memory)")
            self.store.stage_failed(cell.id, stage, error)
            return "keep-failed"
        return "run"

    def recover(self, cell: Cell, stage: str, record: Callable[[float | None], st.Record]) -> bool:
        try:
            result = record(None)
        except (OSError, ValueError, KeyError) as err:
            self.console.print(f"[yellow]{cell.id} · {stage}: its files cannot be read back ({err}); redoing it")
            return False
        self.store.stage_done(cell.id, stage, seconds=result.seconds, metrics=result.metrics, cost=result.cost,
                              artifacts=result.artifacts, detail=result.detail or "recorded again from its files",
                              inference=result.inference)
        self.tally.recovered += 1
        return True

    def fail(self, cell: Cell, stage: str, err: BaseException, seconds: float) -> None:
        log = self.run(cell).path / f"{stage}-error.log"
        write_atomic(log, "".join(traceback.format_exception(err)))
        error = describe_error(err)
        self.store.stage_failed(cell.id, stage, f"{error} (traceback: {self.store.relative(log)})", seconds)
        self.tally.failed.append((cell.id, stage, error))
        self.console.print(f"  [red]failed[/red] {stage}: {error}")
        free_memory()

    def blocked(self, cell: Cell, stage: str, why: str) -> None:
        row = self.store.stage(cell.id, stage)
        if row is None or row.status != "done":
            self.store.stage_failed(cell.id, stage, why)
            self.tally.failed.append((cell.id, stage, why))

    def record_provenance(self, cell: Cell) -> None:
        run = self.run(cell)
        if not run.provenance_file.exists():
            if not any(run.path.joinpath(d).exists() for d in ("eval", "train")):
                return
            run.write_provenance(cell.config, data_hash=st.data_hash(cell.config, run))
        self.store.record_provenance(cell.id, read_json(run.provenance_file))


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


# ---------------------------------------------------------------- a whole study


def unit_members(unit: Unit) -> list[Cell]:
    """The cells a unit touches: those it evaluates, and its trainer even when --only left it out."""
    ids = {c.id for c in unit.cells}
    return [*unit.cells] + ([unit.trainer] if unit.trainer and unit.trainer.id not in ids else [])


def unique_cells(units: list[Unit]) -> list[Cell]:
    return [cell for unit in units for cell in unit_members(unit)]


def cell_rows(units: list[Unit]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    rows, stages = [], {}
    for unit in units:
        evaluated = {c.id for c in unit.cells}
        for cell in unit_members(unit):
            rows.append({**cell.axes(), "cell_id": cell.id, "train_run": unit.trainer.id if unit.trainer else None,
                         "epoch": unit.epoch_of.get(cell.id), "experiments": json.dumps(cell.experiments),
                         "params": json.dumps(cell.config.model_dump(mode="json"))})
            stages[cell.id] = unit.stages(cell) if cell.id in evaluated else ["train"]
    return rows, stages


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the study like Ctrl-C does: the running stage goes back to pending, nothing is lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_study(study: Study, study_dir: Path, *, only: str | None = None, retry_failed: bool = False,
              gpus: list[str] | None = None, yes: bool = False, stages: st.StageFunctions | None = None,
              console: Console | None = None) -> StudyOutcome:
    console = console or Console()
    selected = select_cells(study.cells, only)
    check_size(selected, yes, study)
    prepare_study_dir(study_dir)
    units = with_trainers(selected, study.cells)
    with StudyLock(study_dir) as lock, Store.open(study_dir) as store, sigterm_as_interrupt():
        store.record_study(study.name, study.config.description, str(study.path) if study.path else None,
                           study.config.model_dump(mode="json"))
        rows, stage_names = cell_rows(units)
        store.record_cells(rows, stage_names)
        store.mark_current([cell.id for cell in study.cells])
        for cell in unique_cells(units):
            write_config_if_changed(cell, RunDir.for_cell(study_dir, cell.id))
        options = RunOptions(retry_failed=retry_failed)
        if gpus:
            from tunebench.study.pool import run_pool

            tally = run_pool(units, study_dir, store, gpus, options=options, console=console, lock_fd=lock.fd)
        else:
            runner = Runner(study_dir, store, stages or st.real_stages(), console=console, options=options)
            for i, unit in enumerate(units, 1):
                runner.run_unit(unit, position=f"[{i}/{len(units)}]")
            tally = runner.tally
        ids = [row["cell_id"] for row in rows]
        return StudyOutcome(study_dir, tally, store.status_counts(ids))
