"""The inline executor: each unit runs in this process when the driver waits for it, one after another.

Events reach the driver's listener the moment they happen (a stage is recorded 'running' before it starts,
so a killed driver leaves it to be redone), and Ctrl-C reaches the stage itself. No Ray is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunebench.study.executor import Listener, UnitResult, UnitTask


@dataclass
class InlineHandle:
    unit_id: str
    task: UnitTask
    stop: bool = False


class InlineExecutor:
    name = "inline"

    def __init__(self, stages: object = None) -> None:
        self.stages = stages

    def gpus_available(self) -> int:
        return 0   # resources are not reserved in-process: a unit uses whatever this process sees

    def node_shape(self) -> tuple[float, int]:
        return (0.0, 0)

    def submit(self, task: UnitTask) -> InlineHandle:
        return InlineHandle(task.unit_id, task)

    def wait(self, handles: list[InlineHandle], timeout: float | None,
             listener: Listener) -> list[tuple[InlineHandle, UnitResult]]:
        if not handles:
            return []
        from tunebench.study.task import TaskContext, run_unit_task

        handle = handles[0]
        context = TaskContext(emit=lambda event, important=False: listener(event), should_stop=lambda: handle.stop)
        return [(handle, run_unit_task(handle.task, context, self.stages))]

    def cancel(self, handle: InlineHandle) -> None:
        handle.stop = True   # a unit not yet run is simply never waited for

    def stop_early(self, handle: InlineHandle) -> None:
        handle.stop = True

    def close(self) -> None:
        pass
