"""The Ray executor: one Ray task per unit, with the resources its cells declare.

    driver: RayExecutor ── task.options(num_gpus=N, num_cpus=C, memory=M, max_retries=R).remote(UnitTask)
                        <── EventSink actor <── each task's events (started on node/GPU, progress, epochs, stages)

Ray places each task on a node with the resources free and sets CUDA_VISIBLE_DEVICES to the GPUs it
assigned; tunebench never picks GPUs. A worker process killed by a signal, a node that dies, or a stage
process killed by a signal (SystemFailure) is retried by Ray up to `resources.retries` times, and the task
resumes from the last step checkpoint on storage; a Python exception inside a stage is recorded by the task
and never retried. `--gpus 0,1` starts a local Ray instance with exactly those GPUs (127.0.0.1, no dashboard).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from tunebench.errors import UserError
from tunebench.study.executor import Listener, SystemFailure, UnitResult, UnitStarted, UnitTask

STOP_POLL_S = 1.0


def _sink_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_concurrency=64)
    class EventSink:
        """Collects the tasks' events for the driver, counts attempts, and carries stop requests."""

        def __init__(self) -> None:
            import threading

            self.lock = threading.Lock()
            self.events: list[Any] = []
            self.attempts: dict[str, int] = {}
            self.stops: set[str] = set()

        def put(self, event: Any) -> None:
            with self.lock:
                self.events.append(event)

        def drain(self) -> list[Any]:
            with self.lock:
                out, self.events = self.events, []
            return out

        def started(self, unit_id: str) -> int:
            with self.lock:
                self.attempts[unit_id] = self.attempts.get(unit_id, 0) + 1
                return self.attempts[unit_id]

        def request_stop(self, unit_id: str) -> None:
            with self.lock:
                self.stops.add(unit_id)

        def should_stop(self, unit_id: str) -> bool:
            return unit_id in self.stops

    return EventSink


def run_remote(task: UnitTask, sink: Any, stages: Any) -> UnitResult:
    """The body of every unit's Ray task (in a Ray worker process)."""
    import ray

    from tunebench.study.task import TaskContext, run_unit_task

    attempt = ray.get(sink.started.remote(task.unit_id))
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "") if task.resources.gpus else ""
    node_id = ray.get_runtime_context().get_node_id()
    node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()}, node {node_id[:8]})"
    # awaited, like every stage boundary: the sink's threads would not keep fire-and-forget calls in order
    ray.get(sink.put.remote(UnitStarted(task.unit_id, node, gpus, gpu_type(task), os.getpid(), attempt)))
    last_poll, stop = 0.0, False

    def emit(event: Any, important: bool = False) -> None:
        ref = sink.put.remote(event)
        if important:   # stage boundaries reach the driver before anything that follows them
            ray.get(ref)

    def should_stop() -> bool:
        nonlocal last_poll, stop
        if not stop and time.monotonic() - last_poll >= STOP_POLL_S:
            last_poll = time.monotonic()
            stop = ray.get(sink.should_stop.remote(task.unit_id))
        return stop

    from tunebench.study.task import free_memory

    try:
        result = run_unit_task(task, TaskContext(emit, should_stop, attempt), stages)
    finally:
        free_memory()   # a reused worker gives back what the unit held
    result.attempts = attempt
    return result


def gpu_type(task: UnitTask) -> str | None:
    if not task.resources.gpus:
        return None
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no driver, or a fake GPU resource in a test cluster
        return None


@dataclass
class RayHandle:
    unit_id: str
    ref: Any
    task: UnitTask


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, gpus: list[str] | None = None, stages: Any = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("the Ray executor needs Ray, which is not installed",
                            "pip install 'tunebench[ray]'") from None
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.started_here = False
        self.address = address
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, logging_level="warning")
                else:
                    if gpus:   # Ray numbers its GPUs from this list: exactly these, nothing else
                        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                    # address="local": a new instance even where another one's address file is lying about
                    ray.init(address="local", num_gpus=len(gpus) if gpus else 0, include_dashboard=False,
                             _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="warning")
                    self.started_here = True
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise UserError(f"cannot reach the Ray cluster at {address or 'a new local instance'}: {err}",
                                "start one with 'ray start --head' (or check --address), or run with "
                                "--executor inline") from None
        # The events live with the driver: on the node it is attached to, not on one a lost worker node takes
        # down with it.
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.sink = _sink_class().options(scheduling_strategy=here).remote()
        # A process that started CUDA on one set of GPUs cannot switch to another, so a real GPU unit gets a fresh
        # worker (Ray's own default for GPU tasks); CPU units and stand-in stages reuse workers, which saves the
        # seconds of imports a fresh one costs.
        self.fresh = ray.remote(max_calls=1)(run_remote)
        self.reused = ray.remote(run_remote)
        self.stages = stages

    def gpus_available(self) -> int:
        import ray

        return int(ray.cluster_resources().get("GPU", 0))

    def node_shape(self) -> tuple[float, int]:
        import ray

        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        best = max(alive, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
        return float(best.get("CPU", 0)), int(best.get("GPU", 0))

    def submit(self, task: UnitTask) -> RayHandle:
        r = task.resources
        options: dict[str, Any] = {"num_cpus": r.cpus, "num_gpus": r.gpus, "max_retries": r.retries,
                                   "retry_exceptions": [SystemFailure], "name": f"tunebench:{task.unit_id}"}
        if r.memory_gb:
            options["memory"] = int(r.memory_gb * 2**30)
        remote = self.fresh if r.gpus and self.stages is None else self.reused
        return RayHandle(task.unit_id, remote.options(**options).remote(task, self.sink, self.stages), task)

    def wait(self, handles: list[RayHandle], timeout: float | None,
             listener: Listener) -> list[tuple[RayHandle, UnitResult]]:
        import ray

        by_ref = {h.ref: h for h in handles}
        try:
            ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout, fetch_local=True) if by_ref else ([], [])
            if ready:
                more, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
                ready = list(dict.fromkeys([*ready, *more]))
            finished = [(by_ref[ref], self.result(by_ref[ref])) for ref in ready]
            events = ray.get(self.sink.drain.remote())
        except (ray.exceptions.RaySystemError, ConnectionError) as err:
            raise UserError(f"lost the Ray cluster ({type(err).__name__}: {str(err).splitlines()[0][:200]})",
                            "finished stages are recorded; restart the cluster and run the same command again "
                            "to continue") from None
        for event in events:
            listener(event)
        return finished

    def result(self, handle: RayHandle) -> UnitResult:
        import ray
        from ray import exceptions as rx

        try:
            return ray.get(handle.ref)
        except rx.TaskCancelledError:
            return UnitResult(handle.unit_id, interrupted=True)
        except rx.RayTaskError as err:
            cause = err.cause if hasattr(err, "cause") else None
            if isinstance(cause, SystemFailure):
                return UnitResult(handle.unit_id, system_failure=str(cause))
            if isinstance(cause, KeyboardInterrupt):
                return UnitResult(handle.unit_id, interrupted=True)
            # a bug in the task itself (stage failures are caught and reported inside it)
            return UnitResult(handle.unit_id, system_failure=f"the task raised {describe(err)}")
        except (rx.WorkerCrashedError, rx.NodeDiedError, rx.OutOfMemoryError, rx.ObjectLostError,
                rx.LocalRayletDiedError) as err:
            return UnitResult(handle.unit_id, system_failure=f"{type(err).__name__}: {describe(err)}")

    def cancel(self, handle: RayHandle) -> None:
        import ray

        ray.cancel(handle.ref)   # a KeyboardInterrupt in the task: its stage checkpoints and stops

    def stop_early(self, handle: RayHandle) -> None:
        self.sink.request_stop.remote(handle.unit_id)

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        ray.kill(self.sink)
        if self.started_here:
            ray.shutdown()


def describe(err: BaseException) -> str:
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__
