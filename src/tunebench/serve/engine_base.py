"""What both engines share: the model thread, the inbox, delivery to the event loop, admission control
(see `tunebench.serve.engine` for the overview)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunebench.serve.requests import (
    Completion,
    EngineLimits,
    GenerationFailed,
    GenerationRequest,
    RequestHandle,
    Sequence,
    admit_one,
)
from tunebench.serve.sampling import RowState

log = logging.getLogger("tunebench.serve")

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


_heap_frozen_for_good = False  # freeze_heap ran: this process keeps its heap frozen


def freeze_heap() -> int:
    """Leave every object alive now out of later garbage collections (after a collection, so no garbage is
    kept), as vLLM's `freeze_gc_heap` does once a server has warmed up; returns how many were frozen. A process
    holding a compiled model has millions of long-lived objects, and a full collection walks them all: on the
    H200 (3B, compiled layers) one took 287 ms inside a 1.4 s burst of 512 requests (lead-22; ~0.5 s in
    lead-21), at whichever step it fell. Objects made later (requests, tokens) are still collected as usual."""
    global _heap_frozen_for_good
    gc.collect()
    gc.freeze()
    _heap_frozen_for_good = True
    return gc.get_freeze_count()  # walks the frozen objects: once, at start-up


@contextlib.contextmanager
def heap_frozen() -> Any:
    """`freeze_heap` for the length of a block, without its collection (that would cost the pause it avoids);
    the objects go back to the collector afterwards, unless the process had frozen its heap for good. Both
    are constant-time list splices (unlike gc.get_freeze_count, which walks the list: 66 ms per burst there)."""
    gc.freeze()
    try:
        yield
    finally:
        if not _heap_frozen_for_good:
            gc.unfreeze()


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: concurrent.futures.Future


class Engine:
    """What both engines share: the model thread, the inbox, delivery to the event loop, admission control."""

    kind = "engine"
    slots = 1

    def __init__(self, served: Any, limits: EngineLimits, metrics: Any) -> None:
        from tunebench.evaluate.generation import end_token_ids

        self.served = served
        self.model = served.model
        self.tokenizer = served.tokenizer
        self.device = served.model.device
        self.limits = limits
        self.metrics = metrics
        self.eos_ids = frozenset(end_token_ids(served.model, served.tokenizer))
        self.special_ids = frozenset(served.tokenizer.all_special_ids) | self.eos_ids
        self.mixed_adapters = bool(served.adapters)
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waiting: deque[Sequence] = deque()
        self._outbox: list[tuple[RequestHandle, Any]] = []
        self._in_flight = 0  # touched on the event loop only
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def warm_up(self) -> None:
        """Run before the server reports ready (`create_engine`); engines that capture or compile do it here."""

    # ---------------------------------------------------------------- event-loop side

    @property
    def capacity(self) -> int:
        return self.slots + self.limits.max_queue

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stopping.clear()
        self._thread = threading.Thread(target=self._thread_main, name=f"tunebench-{self.kind}-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the sequences already admitted or queued are done (uvicorn has drained HTTP by now)."""
        self._stopping.set()
        self._inbox.put(None)  # wake the thread
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _admit_one(self) -> None:
        self._in_flight = admit_one(self._in_flight, self.capacity, self.slots, self.limits.max_queue)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        self._admit_one()
        handle = RequestHandle()
        self._inbox.put(Sequence(request, handle, self))
        return handle

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` in the model thread between decode steps (exclusive use of the model); it counts
        against the same capacity as generation requests."""
        self._admit_one()
        try:
            future: concurrent.futures.Future = concurrent.futures.Future()
            self._inbox.put(_Job(fn, future))
            return await asyncio.wrap_future(future)
        finally:
            self._in_flight -= 1

    def _deliver(self, items: list[tuple[RequestHandle, Any]]) -> None:
        for handle, item in items:
            handle._queue.put_nowait(item)
            if isinstance(item, Completion | GenerationFailed):
                self._in_flight -= 1

    # ---------------------------------------------------------------- model-thread side

    def _thread_main(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                self._take_inbox(block=not self._has_work())
                if self._stopping.is_set() and not self._has_work():
                    break
                try:
                    self._iteration()
                except Exception as err:  # a bug or an out-of-memory must not hang every client
                    log.exception("engine iteration failed")
                    self._fail_all(GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))
                self._flush()
        self._fail_all(GenerationFailed("shutdown", "the server is shutting down"))
        self._flush()

    def _has_work(self) -> bool:
        return bool(self._waiting)

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                self._accept_item(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _accept_item(self, item: Any) -> None:
        if isinstance(item, Sequence):
            self._waiting.append(item)
        elif isinstance(item, _Job):
            self._run_job(item)

    @staticmethod
    def _run_job(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except Exception as err:  # handed to the awaiting coroutine, which decides
            job.future.set_exception(err)

    def _iteration(self) -> None:
        raise NotImplementedError

    def _emit(self, seq: Sequence, item: Any) -> None:
        if isinstance(item, Completion | GenerationFailed):
            seq.ended = True
        self._outbox.append((seq.handle, item))

    def _flush(self) -> None:
        if self._outbox and self._loop is not None:
            items, self._outbox = self._outbox, []
            self._loop.call_soon_threadsafe(self._deliver, items)
        self.metrics.waiting.set(len(self._waiting))

    def _admitted(self, seq: Sequence) -> None:
        seq.row = RowState.create(seq.params, seq.request.prompt_ids, self.device)
        self.metrics.queue_time.observe(time.monotonic() - seq.arrival)
        self.metrics.prompt_tokens.observe(len(seq.request.prompt_ids))

    def _token(self, seq: Sequence, token_id: int, logprob: float) -> None:
        now = time.monotonic()
        if seq.last_token_at is None:
            self.metrics.ttft.observe(now - seq.arrival)
        else:
            self.metrics.inter_token.observe(now - seq.last_token_at)
        seq.last_token_at = now
        self._emit(seq, seq.accept(token_id, logprob))
        if seq.done:
            self.metrics.generated_tokens.observe(len(seq.tokens))
            self._emit(seq, seq.completion())

    def _drop_reason(self, seq: Sequence, now: float) -> GenerationFailed | None:
        if seq.handle.cancelled:
            return GenerationFailed("cancelled", "the client disconnected")
        if seq.expired(now):
            return GenerationFailed("timeout", f"the request took longer than {self.limits.request_timeout:g} s")
        return None

    def _fail(self, seq: Sequence, failure: GenerationFailed) -> None:
        if failure.kind in ("cancelled", "timeout"):
            self.metrics.error(failure.kind)
        self._emit(seq, failure)

    def _prune_waiting(self) -> None:
        now = time.monotonic()
        kept: deque[Sequence] = deque()
        for seq in self._waiting:
            failure = self._drop_reason(seq, now)
            if failure:
                self._fail(seq, failure)
            else:
                kept.append(seq)
        self._waiting = kept

    def _fail_all(self, failure: GenerationFailed) -> None:
        while self._waiting:
            self._fail(self._waiting.popleft(), failure)

    def _adapter_kwargs(self, seqs: list[Sequence]) -> dict[str, Any]:
        if not self.mixed_adapters:
            return {}
        return {"adapter_names": [s.request.adapter or BASE for s in seqs]}
