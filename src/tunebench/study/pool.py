"""`--gpus 0,1`: units run concurrently, one worker process per GPU (CUDA_VISIBLE_DEVICES), each writing its
stages to the shared results store (SQLite serialises the short write transactions).

A worker's output goes to `runs/<study>/logs/<unit>.log`. A worker that dies without recording its stage (the
kernel's OOM killer, a CUDA crash) has that stage recorded failed with the exit status and the log's path.
The workers inherit the study lock, so a second runner is refused while any of them still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tunebench.study.plan import Unit
from tunebench.study.store import Store

if TYPE_CHECKING:
    from tunebench.study.runner import RunOptions, Tally

POLL_SECONDS = 0.5


@dataclass
class Worker:
    unit: Unit
    process: subprocess.Popen
    log: Path
    slot: str


def unit_spec(unit: Unit) -> str:
    return json.dumps({"cells": [c.id for c in unit.cells], "trainer": unit.trainer.id if unit.trainer else None,
                       "epoch_of": unit.epoch_of})


def start_worker(unit: Unit, study_dir: Path, slot: str, retry_failed: bool, lock_fd: int | None) -> Worker:
    log = study_dir / "logs" / f"{unit.id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "tunebench.study.worker", str(study_dir), unit_spec(unit)]
    if retry_failed:
        command.append("--retry-failed")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": slot}
    with log.open("a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   pass_fds=(lock_fd,) if lock_fd is not None else ())
    return Worker(unit, process, log, slot)


def unit_cell_ids(unit: Unit) -> list[str]:
    return [c.id for c in unit.cells] + ([unit.trainer.id] if unit.trainer else [])


def finish(worker: Worker, store: Store, console: Console) -> list[tuple[str, str, str]]:
    """Record what a dead worker left running; return the unit's failed stages."""
    code = worker.process.returncode
    failed = []
    for cell_id in unit_cell_ids(worker.unit):
        for row in store.rows("SELECT stage, status, error FROM stages WHERE cell_id = ?", (cell_id,)):
            if row["status"] == "running" and code != 0:
                why = (f"killed by signal {-code}" if code < 0 else f"exited with status {code}")
                hint = " (signal 9 is usually the system running out of memory)" if code == -signal.SIGKILL else ""
                error = f"the worker process {why}{hint}; log: {store.relative(worker.log)}"
                store.stage_failed(cell_id, row["stage"], error)
                row["status"], row["error"] = "failed", error
            if row["status"] == "failed":
                failed.append((cell_id, row["stage"], row["error"] or ""))
    status = "[green]done[/green]" if not failed else f"[red]{len(failed)} failed[/red]"
    console.print(f"GPU {worker.slot or '-'}: {worker.unit.id} {status} (log: {worker.log})")
    return failed


def run_pool(units: list[Unit], study_dir: Path, store: Store, slots: list[str], *, options: RunOptions,
             console: Console, lock_fd: int | None = None) -> Tally:
    """Run every unit, at most one per slot at a time; returns a Tally of what ran and what was reused."""
    from tunebench.study.runner import Tally

    tally = Tally()
    before = done_stages(store)
    queue = deque(units)
    running: dict[str, Worker] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(f"units on GPUs {','.join(slots)}", total=len(units))
            while queue or running:
                for slot in slots:
                    if slot not in running and queue:
                        running[slot] = start_worker(queue.popleft(), study_dir, slot, options.retry_failed, lock_fd)
                time.sleep(POLL_SECONDS)
                for slot, worker in list(running.items()):
                    if worker.process.poll() is not None:
                        del running[slot]
                        tally.failed += finish(worker, store, bar.console)
                        bar.advance(task)
    except KeyboardInterrupt:
        stop_workers(list(running.values()))
        raise
    selected = {cid for unit in units for cid in unit_cell_ids(unit)}
    after = done_stages(store)
    tally.reused = len({s for s in before if s[0] in selected})
    tally.ran = len({s for s in after - before if s[0] in selected})
    return tally


def done_stages(store: Store) -> set[tuple[str, str]]:
    return {(r["cell_id"], r["stage"]) for r in store.rows("SELECT cell_id, stage FROM stages WHERE status = 'done'")}


def stop_workers(workers: list[Worker]) -> None:
    """Ctrl-C: each worker turns SIGTERM into an interrupt and puts its running stage back to pending."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.process.kill()
