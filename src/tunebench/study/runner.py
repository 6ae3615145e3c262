"""The study runner (the driver): plans units, decides what each must do, hands them to an executor, records.

    tunebench run STUDY.yaml [--executor inline|ray] [--address auto|HOST:PORT] [--gpus 0,1]
      check the study directory is writable ─ lock it ─ open results.db (the driver's own disk)
      for each unit (a training run and its evaluations, or one prompting evaluation):
          decide each stage: reuse | run | recover from its files | keep failed
          executor.submit(UnitTask) ── events ──> record running / done / failed in results.db

A stage recorded done (and whose marker file is on storage) is skipped; one left 'running' by a killed
driver is redone (training resumes from its last checkpoint); a failed one is kept failed unless
--retry-failed. A stage that raises (out of memory included) is recorded failed with its error and the
tail of its traceback, and the study goes on. A task killed by a signal or on a lost node is retried by the
executor (resources.retries) and counted in `attempts`. A stage whose files exist but which the store does
not know (a store moved aside) is recorded again from its files.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunebench.config.study import Cell, Study
from tunebench.errors import UserError
from tunebench.rundir import RunDir, write_atomic
from tunebench.study import stages as st
from tunebench.study.executor import (
    EpochMetrics,
    Event,
    Executor,
    Handle,
    Progress,
    Resources,
    StageFinished,
    StageStarted,
    StageWork,
    UnitResult,
    UnitStarted,
    UnitTask,
    make_executor,
)
from tunebench.study.lock import StudyLock
from tunebench.study.plan import Unit, unit_cost, with_trainers
from tunebench.study.select import check_size, select_cells
from tunebench.study.storage import Storage
from tunebench.study.store import Store
from tunebench.study.task import marker
from tunebench.train.signals import sigterm_as_interrupt  # SIGTERM stops a study as Ctrl-C does

WAIT_S = 0.5          # how long the driver waits for a unit to end before it looks at events again
CANCEL_GRACE_S = 120  # Ctrl-C: how long running tasks get to checkpoint and stop


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


# ---------------------------------------------------------------- the driver


@dataclass
class Running:
    handle: Handle
    task: UnitTask
    started: float = 0.0
    where: str = ""
    stage: str = ""
    step: str = ""


class Driver:
    """Decides and records; the executor runs. One per `run_study` call."""

    def __init__(self, study_dir: Path, store: Store, storage: Storage, executor: Executor, console: Console,
                 options: RunOptions, on_epoch: Callable[[Running, EpochMetrics], bool | None] | None = None) -> None:
        self.study_dir, self.store, self.storage = study_dir, store, storage
        self.executor, self.console, self.options = executor, console, options
        self.on_epoch = on_epoch
        self.tally = Tally()
        self.running: dict[str, Running] = {}
        self.queue: deque[UnitTask] = deque()             # planned, not yet submitted
        self.shares: set[tuple[str, str]] = set()        # (unit, cell) pairs whose 'train' is a checkpoint link
        self.interrupted: set[tuple[str, str]] = set()   # stages a killed driver left running
        self.positions: dict[str, str] = {}
        self.where: dict[str, tuple[str, str, int]] = {}  # unit id -> (node, gpus, pid)
        self.gpus = executor.gpus_available()
        self.total = self.ended = 0
        self.t0 = time.monotonic()

    # ------------------------------------------------------------ deciding

    def decide(self, cell: Cell, stage: str) -> str:
        row = self.store.stage(cell.id, stage)
        status = row.status if row else "pending"
        found = self.storage.exists(self.marker_rel(cell, stage))
        if status == "done":
            if found:
                return "reuse"
            self.console.print(f"[yellow]{cell.id} · {stage} is recorded done but its files are gone; redoing it")
            return "run"
        if status == "failed":
            return "run" if self.options.retry_failed else "keep-failed"
        if found:
            # the stage wrote its results (its marker comes last) but the store never heard: a store moved
            # aside, or a driver killed between the two writes
            return "recover"
        if status == "running" and row is not None and row.attempts > cell.config.resources.retries:
            if self.options.retry_failed:
                return "run"
            error = (f"the process running it died {row.attempts} times without an error (killed, e.g. by the "
                     "system when out of memory)")
            self.store.stage_failed(cell.id, stage, error)
            return "keep-failed"
        return "run"

    def marker_rel(self, cell: Cell, stage: str) -> str:
        run = RunDir.for_cell(Path(), cell.id)
        return marker(stage, cell.config, run).as_posix()

    def recover(self, cell: Cell, stage: str, trainer: str | None) -> bool:
        with self.storage.workspace([cell.id]) as root:
            run = RunDir.for_cell(root, cell.id)
            try:
                if stage == "train" and trainer and trainer != cell.id:
                    record = st.shared_train_record(cell.config, run, trainer)
                elif stage == "train":
                    record = st.train_record(cell.config, run, None)
                elif stage == "eval":
                    record = st.eval_record(cell.config, run, None)
                else:
                    record = st.loadtest_record(cell.config, run, None, root)
            except (OSError, ValueError, KeyError) as err:
                self.console.print(f"[yellow]{cell.id} · {stage}: its files cannot be read back ({err}); redoing it")
                return False
            from tunebench.study.task import portable

            record = portable(record, root)
        self.save(cell.id, stage, record, record.detail or "recorded again from its files")
        self.tally.recovered += 1
        return True

    def block(self, cell_id: str, stage: str, why: str) -> None:
        row = self.store.stage(cell_id, stage)
        if row is None or row.status != "done":
            self.store.stage_failed(cell_id, stage, why)
            self.tally.failed.append((cell_id, stage, why))

    def keep_failed(self, cell_id: str, stage: str) -> None:
        kept = self.store.stage(cell_id, stage)
        self.tally.failed.append((cell_id, stage, kept.error if kept and kept.error else "failed"))

    def task_for(self, unit: Unit, position: str, gpus_default: int) -> UnitTask | None:
        """The stages of one unit still to run, or None when every one is reused, recovered or kept failed."""
        work: list[StageWork] = []
        trained = True
        if unit.trainer is not None:
            trained = self.plan_stage(unit.trainer, "train", work, unit)
        for cell in unit.cells:
            ready = trained
            if unit.trainer is not None and cell.id in unit.epoch_of:
                if ready:
                    ready = self.plan_stage(cell, "train", work, unit, share=True)
                else:
                    self.block(cell.id, "train", f"not run: the training run of {unit.trainer.id} failed")
            if not ready:
                self.block(cell.id, "eval", "not run: its training failed")
                continue
            if self.plan_stage(cell, "eval", work, unit) and cell.config.loadtest.enabled:
                self.plan_stage(cell, "loadtest", work, unit)
        self.positions[unit.id] = position
        if not work:
            self.record_provenance_of(unit)
            return None
        members = [*unit.cells] + ([unit.trainer] if unit.trainer and unit.trainer not in unit.cells else [])
        first = (unit.trainer or unit.cells[0]).config.resources
        gpus = first.gpus if first.gpus is not None else gpus_default
        cpus = first.cpus
        if any(w.stage == "loadtest" for w in work) and self.executor.name != "inline":
            # a load test measures $ per 1K tokens: a training neighbour on its node would skew it, so the unit
            # declares the whole (largest) node
            node_cpus, node_gpus = self.executor.node_shape()
            cpus, gpus = max(cpus, node_cpus), max(gpus, node_gpus)
        return UnitTask(
            unit_id=unit.id, configs={c.id: c.config.model_dump(mode="json") for c in members}, work=tuple(work),
            storage=self.storage.uri, trainer=unit.trainer.id if unit.trainer else None, epoch_of=unit.epoch_of,
            resources=Resources(gpus=gpus, cpus=cpus, memory_gb=first.memory_gb, retries=first.retries),
            cost=unit_cost(unit), progress=self.options.progress and self.executor.name == "inline")

    def plan_stage(self, cell: Cell, stage: str, work: list[StageWork], unit: Unit, share: bool = False) -> bool:
        """Add the stage to `work` if it must run; True when its result will be there (reused or to be run)."""
        plan = self.decide(cell, stage)
        if plan == "reuse":
            self.tally.reused += 1
            return True
        if plan == "keep-failed":
            self.keep_failed(cell.id, stage)
            return False
        if plan == "recover" and self.recover(cell, stage, unit.trainer.id if share and unit.trainer else None):
            return True
        row = self.store.stage(cell.id, stage)
        retrying = row is not None and row.status == "failed"
        if row is not None and row.status == "running":
            self.interrupted.add((cell.id, stage))
        if share:
            self.shares.add((unit.id, cell.id))
        work.append(StageWork(cell.id, "share" if share else stage, retrying))
        return True

    # ------------------------------------------------------------ running

    def enqueue(self, units: list[Unit], label: str | None = None) -> list[str]:
        """Plan units and queue those with stages to run (submitted by `step`); their unit ids."""
        gpus_default = 1 if self.gpus > 0 else 0
        tasks = [t for i, u in enumerate(units, 1)
                 if (t := self.task_for(u, label or f"[{i}/{len(units)}]", gpus_default))]
        if self.executor.name != "inline":
            tasks.sort(key=lambda t: -t.cost)       # the longest first: the last to finish is a short one
        self.queue.extend(tasks)
        self.total += len(tasks)
        return [t.unit_id for t in tasks]

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def step(self) -> list[str]:
        """Submit what may be submitted, wait up to WAIT_S, record what ended; the ids of the units that ended.
        A caller that keeps adding units between steps (a search) drives one executor for all of them."""
        while self.queue and self.may_submit(self.queue[0]):
            task = self.queue.popleft()
            self.running[task.unit_id] = Running(self.executor.submit(task), task)
        ended = []
        for handle, result in self.executor.wait([r.handle for r in self.running.values()], WAIT_S, self.on_event):
            ended.append(handle.unit_id)
            self.finish(self.running[handle.unit_id], result)
        return ended

    def run(self, units: list[Unit]) -> None:
        self.enqueue(units)
        self.ended, self.t0 = 0, time.monotonic()
        live = None
        if self.executor.name != "inline" and self.console.is_terminal and self.queue:
            from rich.live import Live

            live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2, transient=True)
            live.start()
        try:
            while self.busy:
                self.step()
        except KeyboardInterrupt:
            self.cancel_all()
            raise
        finally:
            if live is not None:
                live.stop()

    def render(self) -> Any:
        """The live view: units ended / running / waiting, and where each running one is and how far."""
        from rich.table import Table

        failed = len({cid for cid, _, _ in self.tally.failed})
        table = Table(title=f"{self.ended}/{self.total} units ended · {len(self.running)} submitted · "
                      f"{failed} cell(s) failed · {time.monotonic() - self.t0:.0f} s", title_justify="left")
        for column in ("unit", "where", "stage", "step", "elapsed"):
            table.add_column(column, overflow="fold")
        for r in sorted(self.running.values(), key=lambda r: (not r.where, r.started)):
            elapsed = f"{time.monotonic() - r.started:.0f} s" if r.where else "waiting"
            table.add_row(r.task.unit_id, r.where or "-", r.stage or "-", r.step or "-", elapsed)
        return table

    def may_submit(self, task: UnitTask) -> bool:
        if self.executor.name == "inline":
            return not self.running
        # Keep a few units queued at the executor, but never queue past one that waits for several GPUs: Ray
        # would hand each freed GPU to the single-GPU units behind it and starve it.
        waiting = [r for r in self.running.values() if not r.where]
        if any(r.task.resources.gpus > 1 for r in waiting):
            return False
        return len(waiting) < max(2, self.gpus // 2 or 2)

    def cancel_all(self) -> None:
        """Ctrl-C: every running task checkpoints and stops; its stage goes back to pending."""
        if not self.running:
            return
        self.console.print(f"[yellow]stopping {len(self.running)} running unit(s)...")
        for r in self.running.values():
            self.executor.cancel(r.handle)
        deadline = time.monotonic() + CANCEL_GRACE_S
        while self.running and time.monotonic() < deadline:
            try:
                for handle, _ in self.executor.wait([r.handle for r in self.running.values()], WAIT_S,
                                                    self.on_event):
                    self.mark_unfinished(self.running.pop(handle.unit_id).task, "pending", "interrupted")
            except KeyboardInterrupt:
                break
        for running in self.running.values():
            self.mark_unfinished(running.task, "pending", "interrupted")
        self.running.clear()   # a second Ctrl-C handler (a session's) has nothing left to wait for
        self.queue.clear()

    def mark_unfinished(self, task: UnitTask, status: str, why: str) -> None:
        for cell_id in task.configs:
            for stage in ("train", "eval", "loadtest"):
                row = self.store.stage(cell_id, stage)
                if row is not None and row.status == "running":
                    if status == "pending":
                        self.store.stage_pending(cell_id, stage, why)
                    else:
                        self.store.stage_failed(cell_id, stage, why)
                        self.tally.failed.append((cell_id, stage, why))

    def finish(self, running: Running, result: UnitResult) -> None:
        try:
            if result.system_failure:
                why = (f"{result.system_failure} (system failure; {running.task.resources.retries} retries spent"
                       + (f", last on {running.where}" if running.where else "") + ")")
                self.console.print(f"  [red]unit {running.task.unit_id} lost[/red]: {why}")
                self.mark_unfinished(running.task, "failed", why)
                for work in running.task.work:
                    row = self.store.stage(work.cell_id, "train" if work.stage == "share" else work.stage)
                    if row is not None and row.status == "pending":
                        self.block(work.cell_id, row.stage, f"not run: {why}")
            for cell_id, prov in result.provenance.items():
                self.store.record_provenance(cell_id, prov)
        finally:
            self.running.pop(running.task.unit_id, None)
            self.ended += 1
        if result.interrupted and self.executor.name == "inline":
            raise KeyboardInterrupt

    def record_provenance_of(self, unit: Unit) -> None:
        from tunebench.rundir import read_json

        if not self.storage.local:
            return
        for cell in [*unit.cells, *([unit.trainer] if unit.trainer else [])]:
            path = RunDir.for_cell(self.storage.root, cell.id).provenance_file
            if path.exists():
                self.store.record_provenance(cell.id, read_json(path))

    # ------------------------------------------------------------ events

    def on_event(self, event: Event) -> None:
        running = self.running.get(event.unit_id)
        if isinstance(event, UnitStarted):
            self.where[event.unit_id] = (event.node, event.gpus, event.pid)
            if running is not None:
                running.where = event.node + (f" GPU {event.gpus}" if event.gpus else "")
                running.started = time.monotonic()
            if self.executor.name != "inline":
                again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
                self.console.print(f"unit {event.unit_id} started on {running.where if running else event.node}"
                                   f"{again}", highlight=False)
        elif isinstance(event, StageStarted):
            node, gpus, pid = self.where.get(event.unit_id, ("", "", 0))
            self.store.stage_started(event.cell_id, event.stage, node=node or None, gpus=gpus or None, pid=pid or None)
            if running is not None:
                running.stage = f"{event.cell_id} · {event.stage}"
            if event.note != "shared":
                again = ["again: it was interrupted"] if (event.cell_id, event.stage) in self.interrupted else []
                notes = [*again, *([event.note] if event.note else [])]
                note = f" ({'; '.join(notes)})" if notes else ""
                self.console.print(f"[bold]{self.positions.get(event.unit_id, '')}[/bold] {event.cell_id} · "
                                   f"{event.stage}{note}", highlight=False)
        elif isinstance(event, Progress):
            if running is not None:
                running.step = f"{event.step}/{event.total}"
        elif isinstance(event, EpochMetrics):
            # the callback (a search's pruner) returns True to stop that unit at its next step
            if self.on_epoch is not None and running is not None and self.on_epoch(running, event):
                self.executor.stop_early(running.handle)
        elif isinstance(event, StageFinished):
            self.stage_finished(event)

    def stage_finished(self, event: StageFinished) -> None:
        quiet = (event.unit_id, event.cell_id) in self.shares and event.stage == "train"
        if event.status in ("done", "stopped"):
            record = event.record
            detail = record.detail
            if event.status == "stopped":
                detail = "; ".join(p for p in ("stopped early by the driver", detail) if p)
            self.save(event.cell_id, event.stage, record, detail)
            self.tally.ran += 1
            if not quiet:
                # CPU time (all threads) beside wall time: on a shared machine the wall time alone says little
                headline = st.headline(record)
                self.console.print(f"  [green]done[/green] {event.stage} in {event.seconds:.1f} s "
                                   f"(CPU {event.cpu_seconds:.1f} s)" + (f" · {headline}" if headline else ""),
                                   highlight=False)
        elif event.status == "interrupted":
            self.store.stage_pending(event.cell_id, event.stage, "interrupted")
        else:
            self.store.stage_failed(event.cell_id, event.stage, event.error or "failed", event.seconds or None)
            self.tally.failed.append((event.cell_id, event.stage, event.error or "failed"))
            if not event.error or not event.error.startswith("not run:"):
                self.console.print(f"  [red]failed[/red] {event.stage}: {event.error}", highlight=False)
                if event.log_tail and self.executor.name != "inline":
                    self.console.print(event.log_tail, markup=False, highlight=False)

    def save(self, cell_id: str, stage: str, record: st.Record, detail: str | None) -> None:
        if not self.storage.local:
            self.mirror(cell_id, stage)
        self.store.stage_done(cell_id, stage, seconds=record.seconds, metrics=record.metrics, cost=record.cost,
                              artifacts=record.artifacts, detail=detail, inference=record.inference)


    def mirror(self, cell_id: str, stage: str) -> None:
        """Small result files onto the driver's disk beside results.db, for the report and `--run DIR` readers:
        evaluations and load tests whole, a training run's summary and metrics (never weights or checkpoints)."""
        parts = {"eval": ["eval"], "loadtest": ["serve"], "train": ["train/summary.json", "train/metrics.jsonl"]}
        for part in [*parts.get(stage, []), "resolved-config.yaml", "provenance.json"]:
            rel = f"{cell_id}/{part}"
            try:
                self.storage.pull(rel, self.study_dir / rel)
            except OSError as err:   # the record is in results.db either way; the report will say what is missing
                self.console.print(f"[yellow]could not copy {rel} from {self.storage.uri}: {err}")


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


def executor_choice(study: Study, executor: str | None, gpus: list[str] | None) -> str:
    if gpus and executor == "inline":
        raise UserError("--gpus runs cells concurrently, which is the Ray executor, not --executor inline",
                        "drop --executor inline, or drop --gpus to run the cells one after another")
    return executor or ("ray" if gpus else study.config.executor.name)


class Session:
    """One driver over a study directory: its lock, results.db, storage and one executor, held until the session
    ends. `run_study` runs one list of units through it; a search adds one trial's cells whenever another trial
    ends, so the executor (a Ray instance) is started once for the whole search."""

    def __init__(self, study_dir: Path, store: Store, storage: Storage, driver: Driver) -> None:
        self.study_dir, self.store, self.storage, self.driver = study_dir, store, storage, driver

    def record(self, units: list[Unit]) -> list[dict[str, Any]]:
        """The units' cells into results.db (pending stages) and their resolved configs onto storage."""
        rows, stage_names = cell_rows(units)
        self.store.record_cells(rows, stage_names)
        if self.storage.local:
            for cell in unique_cells(units):
                write_config_if_changed(cell, RunDir.for_cell(self.storage.root, cell.id))
        return rows

    def add(self, cells: list[Cell], label: str | None = None) -> list[str]:
        """Queue cells (planned among themselves); the ids of the units with stages to run."""
        units = with_trainers(cells, cells)
        self.record(units)
        return self.driver.enqueue(units, label)


@contextmanager
def driver_session(study: Study, study_dir: Path, *, retry_failed: bool = False, gpus: list[str] | None = None,
                   stages: st.StageFunctions | None = None, console: Console | None = None,
                   executor: str | None = None, address: str | None = None, storage: str | None = None,
                   on_epoch: Callable[[Running, EpochMetrics], bool | None] | None = None) -> Iterator[Session]:
    """Lock the study directory, open results.db and the executor once; Ctrl-C stops the running units (they
    checkpoint and go back to pending) before the executor is closed."""
    console = console or Console()
    prepare_study_dir(study_dir)
    name = executor_choice(study, executor, gpus)
    where = Storage(storage or study.config.storage or str(study_dir))
    where.check_writable()
    with StudyLock(study_dir), Store.open(study_dir) as store, sigterm_as_interrupt():
        store.record_study(study.name, study.config.description, str(study.path) if study.path else None,
                           study.config.model_dump(mode="json"))
        runner = make_executor(name, address=address or study.config.executor.address, gpus=gpus, stages=stages)
        try:
            driver = Driver(study_dir, store, where, runner, console, RunOptions(retry_failed=retry_failed), on_epoch)
            try:
                yield Session(study_dir, store, where, driver)
            except KeyboardInterrupt:
                driver.cancel_all()
                raise
        finally:
            runner.close()


def run_study(study: Study, study_dir: Path, *, only: str | None = None, retry_failed: bool = False,
              gpus: list[str] | None = None, yes: bool = False, stages: st.StageFunctions | None = None,
              console: Console | None = None, executor: str | None = None, address: str | None = None,
              storage: str | None = None, on_epoch: Callable[[Running, EpochMetrics], bool | None] | None = None,
              before_run: Callable[[list[Cell]], None] | None = None) -> StudyOutcome:
    """Run the selected cells; `before_run(cells)` is called once every check has passed (the directory is
    writable and this study's, the lock held, the executor up) and before any unit starts: where the launch
    prediction is kept, so that a refused run leaves nothing behind."""
    console = console or Console()
    selected = select_cells(study.cells, only)
    check_size(selected, yes, study)
    units = with_trainers(selected, study.cells)
    with driver_session(study, study_dir, retry_failed=retry_failed, gpus=gpus, stages=stages, console=console,
                        executor=executor, address=address, storage=storage, on_epoch=on_epoch) as session:
        rows = session.record(units)
        session.store.mark_current([cell.id for cell in study.cells])
        if before_run is not None:
            before_run(selected)
        session.driver.run(units)
        ids = [row["cell_id"] for row in rows]
        return StudyOutcome(study_dir, session.driver.tally, session.store.status_counts(ids))
