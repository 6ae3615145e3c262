"""The split front end's side of the engine (`serve.frontend: split`): the engine runs in a process of its own
(`tunebench.serve.core`) and this process keeps HTTP, validation, tokenization, detokenization, stop strings and
streaming, talking to it over `tunebench.serve.channel`.

`EngineClient` stands where the in-process engine stands in `ServerState` (submit, call_job, capacity,
in_flight, alive), so every route works unchanged: a request's tokens arrive as ids and are turned into
TokenEvents and a Completion here, by the same `Sequence` code the in-process engine uses. The reliability
rules hold across the boundary: a client that disconnects cancels its request in the engine; admission control
(running + queued) is counted here, before anything is sent; the engine enforces each request's deadline and a
watchdog here fails requests that outlive it by DEADLINE_MARGIN_S (an engine stuck in a step); an engine
process that exits fails every open request at once (500, or an error event ending the stream) and /health
answers 503 from then on. With several front-end processes (`tunebench.serve.frontends`) each has one of these
on a channel of its own, admits its share of the server's capacity, and does not own the engine process: its
stop waits for its own requests, not for the engine to exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tunebench.errors import UserError
from tunebench.serve.channel import DONE, TOKEN, BlockingChannel, encode, read_message
from tunebench.serve.core import apply_metric_updates
from tunebench.serve.options import engine_limits
from tunebench.serve.requests import EngineLimits, GenerationFailed, Overloaded, RequestHandle, Sequence, admit_one

log = logging.getLogger("tunebench.serve")
DEADLINE_MARGIN_S = 5.0  # past a request's deadline, the engine should have failed it already
WATCH_EVERY_S = 0.25
STOP_GRACE_S = 30.0


class RemoteHandle(RequestHandle):
    """A RequestHandle whose cancel() also tells the engine process (once, and only while it is open)."""

    def __init__(self, client: EngineClient, rid: int) -> None:
        super().__init__()
        self.client, self.rid = client, rid

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.client._cancel(self.rid)


class EngineClient:
    """The engine process, as the routes see an engine."""

    def __init__(self, process: Any, sock: socket.socket, info: dict[str, Any], limits: EngineLimits,
                 metrics: Any, tokenizer: Any, frontends: int = 1) -> None:
        self.process, self.sock, self.limits, self.metrics, self.tokenizer = process, sock, limits, metrics, tokenizer
        self.frontends = frontends  # > 1: the engine process is shared (and owned by the supervisor)
        self.kind = info["kind"]
        self.slots = info["slots"]
        self.eos_ids = frozenset(info["eos_ids"])
        self.heap_frozen = info["heap_frozen"]  # objects the engine process froze out of garbage collection
        self.special_ids = frozenset(tokenizer.all_special_ids) | self.eos_ids
        self.open: dict[int, Sequence] = {}  # requests the engine has not finished
        self.jobs: dict[int, asyncio.Future] = {}
        self._ids = itertools.count()
        self._in_flight = 0
        self._writer: Any = None
        self._tasks: list[asyncio.Task] = []
        self.gone: str | None = None  # why the engine process is no longer usable

    # ------------------------------------------------------------ what the routes use

    @property
    def capacity(self) -> int:
        """Requests this front end admits: its share of the server's running + queued bound (never above it)."""
        return max(1, self.total_capacity // self.frontends)

    @property
    def total_capacity(self) -> int:
        return self.slots + self.limits.max_queue

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def alive(self) -> bool:
        return self.gone is None and self.process.poll() is None

    def _admit_one(self) -> None:
        try:
            self._in_flight = admit_one(self._in_flight, self.capacity, self.slots, self.limits.max_queue)
        except Overloaded as err:
            if self.frontends == 1:
                raise
            raise Overloaded(f"{err}: this front end's share, 1/{self.frontends}") from None

    def submit(self, request: Any) -> RemoteHandle:
        self._admit_one()
        rid = next(self._ids)
        handle = RemoteHandle(self, rid)
        seq = Sequence(request, handle, self)
        if self.gone is not None:
            self._end(seq, GenerationFailed("internal", self.gone))
            return handle
        self.open[rid] = seq
        self._send(("submit", rid, request))
        return handle

    async def call_job(self, job: Any) -> Any:
        """Run `job.run(served)` in the engine process between iterations (an engine request type)."""
        self._admit_one()
        rid = next(self._ids)
        try:
            if self.gone is not None:
                raise GenerationFailed("internal", self.gone)
            future = asyncio.get_running_loop().create_future()
            self.jobs[rid] = future
            self._send(("job", rid, job))
            try:
                return await future
            except asyncio.CancelledError:
                self._send(("cancel_job", rid))  # not started yet: the engine skips it
                raise
        finally:
            self.jobs.pop(rid, None)
            self._in_flight -= 1

    # ------------------------------------------------------------ lifespan

    async def start_async(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sock.setblocking(False)
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock)
        self._tasks = [loop.create_task(self._read(reader)), loop.create_task(self._watch())]

    async def stop_async(self, timeout: float = STOP_GRACE_S) -> None:
        """The engine finishes what it holds (uvicorn has drained HTTP by now) and exits; a shared engine finishes
        this front end's requests and goes on serving the others."""
        self._send(("stop",))
        if self.frontends > 1:
            deadline = time.monotonic() + timeout
            while (self.open or self.jobs) and self.gone is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        else:
            try:
                await asyncio.to_thread(self.process.wait, timeout)
            except subprocess.TimeoutExpired:
                log.warning("the engine process did not stop in %.0f s: killing it", timeout)
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        self.gone = self.gone or "the server is shutting down"
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            self._writer.close()

    def stop(self, timeout: float = STOP_GRACE_S) -> None:
        """Without an event loop (the app never started): end the process."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.sock.close()

    # ------------------------------------------------------------ the channel

    def _send(self, message: Any) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(encode(message))  # buffered: never blocks the event loop

    def _cancel(self, rid: int) -> None:
        if rid in self.open:
            self._send(("cancel", rid))

    async def _read(self, reader: Any) -> None:
        try:
            while True:
                message = await read_message(reader)
                if message[0] == "out":
                    self._events(message[1])
                    apply_metric_updates(self.metrics, message[2])
                elif message[0] == "job":
                    self._job_done(*message[1:])
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        self._engine_gone()

    def _events(self, events: list[tuple]) -> None:
        for rid, kind, a, b in events:
            seq = self.open.get(rid)
            if seq is None:  # finished here already (a stop string), or failed by the watchdog
                continue
            if kind == TOKEN:
                seq.handle._queue.put_nowait(seq.accept(a, b))
                if seq.done:
                    self._end(seq, seq.completion())
                    if seq.finish_reason == "stop_sequence":  # the engine ends it quietly: counted here
                        self._send(("finish", rid))
                        self.metrics.generated_tokens.observe(len(seq.tokens))
            elif kind == DONE:
                if not seq.done:  # the engine's verdict (EOS or the token limit) stands
                    seq.finish_reason = a
                self._end(seq, seq.completion())
            else:
                self._end(seq, GenerationFailed(a, b))

    def _end(self, seq: Sequence, item: Any) -> None:
        seq.ended = True
        seq.handle._queue.put_nowait(item)
        if self.open.pop(seq.handle.rid, None) is not None or self.gone is not None:  # type: ignore[attr-defined]
            self._in_flight -= 1

    def _job_done(self, rid: int, ok: bool, value: Any) -> None:
        future = self.jobs.get(rid)
        if future is None or future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(GenerationFailed(*value))

    async def _watch(self) -> None:
        """The engine process's exit (a socket can outlive it in a forked child) and overdue requests."""
        while self.gone is None:
            await asyncio.sleep(WATCH_EVERY_S)
            if self.process.poll() is not None:
                self._engine_gone()
                return
            now = time.monotonic()
            for seq in [s for s in self.open.values() if now > s.deadline + DEADLINE_MARGIN_S]:
                self.metrics.error("timeout")
                self._send(("cancel", seq.handle.rid))  # type: ignore[attr-defined]
                self._end(seq, GenerationFailed("timeout", f"the request took longer than "
                                                f"{self.limits.request_timeout:g} s (the engine did not answer)"))

    def _engine_gone(self) -> None:
        if self.gone is not None:
            return
        try:  # the socket closes a moment before the process can be reaped
            code = self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        how = f"exited with code {code}" if code is not None and code >= 0 else \
            f"was killed by signal {-code}" if code is not None else \
            "exited" if self.process.poll() is not None else "closed its channel"
        self.gone = f"the engine process {how}; the server cannot generate until it is restarted"
        log.error(self.gone)
        failure = GenerationFailed("internal", self.gone)
        for seq in list(self.open.values()):
            self.open.pop(seq.handle.rid)  # type: ignore[attr-defined]
            self._in_flight -= 1
            seq.ended = True
            seq.handle._queue.put_nowait(failure)
        for future in self.jobs.values():
            if not future.done():
                future.set_exception(failure)


# ---------------------------------------------------------------- start-up


def spawn_engine(model_options: Any, kind: str, limits: EngineLimits,
                 frontends: int = 1) -> tuple[subprocess.Popen, list[BlockingChannel]]:
    """The engine process, one channel per front end; the first channel has asked it to load the model."""
    import tunebench

    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(frontends)]
    fds = [theirs.fileno() for _, theirs in pairs]
    env = dict(os.environ)
    src = str(Path(tunebench.__file__).resolve().parents[1])  # the same tunebench, whatever the caller's sys.path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the engine relays its observations; it writes no metric files
    process = subprocess.Popen([sys.executable, "-m", "tunebench.serve.core", *map(str, fds)], pass_fds=fds, env=env)
    channels = []
    for ours, theirs in pairs:
        theirs.close()
        channels.append(BlockingChannel(ours))
    channels[0].send(("init", model_options, kind, limits))
    return process, channels


def await_ready(process: subprocess.Popen, channel: BlockingChannel) -> dict[str, Any]:
    """The engine's "ready" on this channel, or a UserError with its problem (the process is then stopped)."""
    try:
        answer = channel.receive_one(None)
        if answer is None:
            process.wait()
            raise UserError(f"the engine process exited with code {process.returncode} while loading the model",
                            "see its log above; run with --frontend inline to load it in this process")
        if answer[0] == "error":
            raise UserError(answer[1], answer[2])
        return answer[1]
    except BaseException:
        if process.poll() is None:
            process.kill()
        process.wait()
        channel.sock.close()
        raise


def front_model(model_options: Any) -> tuple[Any, Any, Any]:
    """What the front end loads itself: the tokenizer, and the run and model source for a run's task routes."""
    from tunebench.models.loading import resolve
    from tunebench.serve.loading import load_served_tokenizer, resolve_sources

    model_cfg, run, _ = resolve_sources(model_options)
    source = resolve(model_cfg)
    return load_served_tokenizer(model_options, source, model_cfg, run), run, source


def build_split_state(model_options: Any, options: Any) -> Any:
    """The engine process (started, its model loaded) and the front end's state around it."""
    limits = engine_limits(options)
    process, (channel,) = spawn_engine(model_options, options.engine, limits)
    try:
        front = front_model(model_options)  # while the engine process loads the model
    except BaseException:
        process.kill()
        process.wait()
        channel.sock.close()
        raise
    info = await_ready(process, channel)
    return front_state(front, options, info, process, channel.sock)


def front_state(front: tuple[Any, Any, Any], options: Any, info: dict[str, Any], process: Any,
                sock: socket.socket, frontends: int = 1) -> Any:
    """A front end's ServerState around the engine process that reported `info` on `sock`."""
    from tunebench.serve.loading import ServedModel, run_task
    from tunebench.serve.metrics import ServeMetrics
    from tunebench.serve.state import ServerState
    from tunebench.serve.validate import Limits, RequestBuilder

    tokenizer, run, source = front
    served = ServedModel(None, tokenizer, model_id=info["model_id"], context_length=info["context_length"],
                         dtype=info["dtype"], device=info["device"],
                         adapters={name: Path(path) for name, path in info["adapters"].items()},
                         default_adapter=info["default_adapter"], merged=info["merged"])
    if run is not None:
        served.task = run_task(run, tokenizer, source, served.default_adapter)
    metrics = ServeMetrics(options.engine)
    client = EngineClient(process, sock, info, engine_limits(options), metrics, tokenizer, frontends)
    return ServerState(served, client, metrics, options, RequestBuilder(served, Limits.of(served, options)))
