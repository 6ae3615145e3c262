"""The executor seam: the runner plans units, decides and records; an executor runs them.

    runner (driver) ── submit(UnitTask) ──> executor ── runs run_unit_task(...) somewhere ──> UnitResult
                     <── events (UnitStarted, StageStarted, Progress, EpochMetrics, StageFinished) ──

Everything that crosses the seam is plain data (dataclasses of str, int, float, dict): no Ray type appears
here, so another executor (SLURM through submitit, say) is one more class with the same five methods.
Tasks compute and return their stage records by value; only the driver writes results.db.

Two executors: `InlineExecutor` (one unit after another in this process, the default; imports no Ray) and
`RayExecutor` (one Ray task per unit with the resources its cells declare, on a local instance or a cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# ---------------------------------------------------------------- what a task is asked to do


@dataclass(frozen=True)
class Resources:
    gpus: int = 0
    cpus: float = 1.0
    memory_gb: float | None = None
    retries: int = 2


@dataclass(frozen=True)
class StageWork:
    """One stage the driver decided to run: train (a unit's training run), share (link an epoch checkpoint of
    the unit's training run), eval or loadtest, of one cell."""

    cell_id: str
    stage: str           # train | share | eval | loadtest
    retrying: bool = False   # a failed stage run again (--retry-failed): start over instead of resuming


@dataclass(frozen=True)
class UnitTask:
    unit_id: str
    configs: dict[str, dict[str, Any]]       # cell id -> its resolved CellConfig as JSON
    work: tuple[StageWork, ...]
    storage: str                             # where run directories live (a local path or an fsspec URI)
    trainer: str | None = None
    epoch_of: dict[str, int] = field(default_factory=dict)
    resources: Resources = Resources()
    cost: float = 0.0                        # the scheduling estimate (longest first)
    progress: bool = False                   # show the stage's own progress bars (inline, on a terminal)


# ---------------------------------------------------------------- what running units report


@dataclass(frozen=True)
class Event:
    unit_id: str


@dataclass(frozen=True)
class UnitStarted(Event):
    node: str = ""
    gpus: str = ""            # CUDA_VISIBLE_DEVICES as the executor set it
    gpu_type: str | None = None
    pid: int = 0
    attempt: int = 1


@dataclass(frozen=True)
class StageStarted(Event):
    cell_id: str = ""
    stage: str = ""
    note: str = ""            # "resuming from checkpoint-40", "again: it was interrupted"


@dataclass(frozen=True)
class Progress(Event):
    cell_id: str = ""
    stage: str = ""
    step: int = 0
    total: int = 0


@dataclass(frozen=True)
class EpochMetrics(Event):
    cell_id: str = ""
    epoch: int = 0
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StageFinished(Event):
    cell_id: str = ""
    stage: str = ""
    status: str = "done"      # done | failed | interrupted | stopped (told to stop early; its record is kept)
    record: Any = None        # tunebench.study.stages.Record (plain data)
    error: str | None = None
    log_tail: str | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class UnitResult:
    unit_id: str
    finished: list[StageFinished] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)   # cell id -> provenance.json
    interrupted: bool = False
    system_failure: str | None = None   # the task's process or node died (after the executor's retries)
    attempts: int = 1


Listener = Callable[[Event], None]


class Handle(Protocol):
    unit_id: str


class Executor(Protocol):
    """Runs UnitTasks. `wait` delivers the events of running units to `listener` and returns those that ended."""

    name: str

    def gpus_available(self) -> int: ...

    def node_shape(self) -> tuple[float, int]: ...   # (CPUs, GPUs) of the largest node: a unit that needs a node alone

    def submit(self, task: UnitTask) -> Handle: ...

    def wait(self, handles: list[Handle], timeout: float | None, listener: Listener) -> list[tuple[Handle,
                                                                                                   UnitResult]]: ...

    def cancel(self, handle: Handle) -> None: ...

    def stop_early(self, handle: Handle) -> None: ...

    def close(self) -> None: ...


class SystemFailure(Exception):
    """The process running a stage was killed by a signal (a torchrun child, the OOM killer): retried."""


def make_executor(name: str, *, address: str | None = None, gpus: list[str] | None = None,
                  stages: Any = None) -> Executor:
    if name == "inline":
        from tunebench.study.executor.inline import InlineExecutor

        return InlineExecutor(stages)
    if name == "ray":
        from tunebench.study.executor.ray_cluster import RayExecutor

        return RayExecutor(address=address, gpus=gpus, stages=stages)
    from tunebench.errors import UserError

    raise UserError(f"unknown executor {name!r}", "use --executor inline or --executor ray")
