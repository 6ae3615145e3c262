"""What every route needs: the served model, the engine, the limits, and waiting on a request's result."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tunebench.errors import SettingError
from tunebench.serve.engine import Completion, Engine, GenerationFailed, GenerationRequest, Overloaded, RequestHandle
from tunebench.serve.validate import ApiError, RequestBuilder

FAILURE_STATUS = {"timeout": 504, "cancelled": 499, "shutdown": 503, "internal": 500}
RETRY_AFTER_S = "1"
# Texts up to this many characters are tokenized on the event loop (well under a millisecond); longer ones in the
# tokenizing thread. The hop to the thread cost more than it saved for short prompts: under a 512-request burst
# every request waited for the loop twice and the GIL handoffs on top, and the engine sat idle until the front
# ends let the requests through. TUNEBENCH_TOKENIZE_INLINE_CHARS overrides it; 0 sends every text to the thread.
INLINE_TOKENIZE_CHARS = 8192


def inline_tokenize_chars() -> int:
    """INLINE_TOKENIZE_CHARS, or TUNEBENCH_TOKENIZE_INLINE_CHARS where set (refused unless a whole number >= 0)."""
    raw = os.environ.get("TUNEBENCH_TOKENIZE_INLINE_CHARS", str(INLINE_TOKENIZE_CHARS))
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise SettingError(f"TUNEBENCH_TOKENIZE_INLINE_CHARS={raw!r}; expected a whole number of characters >= 0 "
                           f"(default {INLINE_TOKENIZE_CHARS}; 0 tokenizes every text in the tokenizing thread)")
    return value


def text_size(value: Any, limit: int, depth: int = 6) -> int:
    """Characters of text in a request's arguments (strings, in lists, dicts and pydantic models), counted until
    `limit` is passed. Other objects (the server's state) hold no request text."""
    if isinstance(value, str):
        return len(value)
    if depth == 0:
        return 0
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list | tuple):
        items = value
    elif hasattr(type(value), "model_fields"):  # a pydantic request body
        items = vars(value).values()
    else:
        return 0
    total = 0
    for item in items:
        total += text_size(item, limit - total, depth - 1)
        if total > limit:
            break
    return total


@dataclass
class ServerState:
    served: Any  # tunebench.serve.loading.ServedModel
    engine: Engine  # or, with the split front end, tunebench.serve.client.EngineClient
    metrics: Any  # tunebench.serve.metrics.ServeMetrics
    options: Any  # tunebench.serve.options.ServerOptions
    builder: RequestBuilder
    started: float = field(default_factory=time.time)
    frontend_index: int = 0  # which of several front-end processes this is (tunebench.serve.frontends)
    # Long texts are tokenized here, off the event loop (a long prompt must not stall every route); one thread,
    # so that thread never calls the tokenizer concurrently with itself. Short ones are tokenized on the loop.
    tokenizing: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="tunebench-tokenize"))
    inline_chars: int = field(default_factory=inline_tokenize_chars)  # longest text tokenized on the loop
    _threaded: int = 0  # builds sent to the tokenizing thread and not yet back

    async def build(self, fn: Any, *args: Any) -> Any:
        """`fn(*args)` (a RequestBuilder method: tokenization and checks): here for short texts, in the
        tokenizing thread for long ones (`inline_chars`)."""
        # Not while the thread tokenizes: the tokenizer is never called by two threads at once.
        if not self._threaded and text_size(args, self.inline_chars) <= self.inline_chars:
            return fn(*args)
        self._threaded += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.tokenizing, fn, *args)
        finally:
            self._threaded -= 1

    def submit(self, request: GenerationRequest) -> RequestHandle:
        try:
            return self.engine.submit(request)
        except Overloaded as err:
            raise ApiError(503, "overloaded", f"the server is at capacity: {err}; retry later",
                           {"Retry-After": RETRY_AFTER_S}) from None

    async def call(self, http_request: Any, job: Any) -> Any:
        """Run `job.run(served)` on the model between decode steps (constrained classification; see
        `tunebench.serve.jobs`): in the engine's thread, or as a request to the engine process. A client that
        disconnects meanwhile cancels it: a job not started yet is dropped and its place in the queue freed at
        once."""
        call_job = getattr(self.engine, "call_job", None)  # the split front end's EngineClient
        call = asyncio.ensure_future(call_job(job) if call_job else self.engine.call(partial(job.run, self.served)))
        watcher = asyncio.create_task(wait_for_disconnect(http_request))
        try:
            await asyncio.wait({call, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not call.done():
                call.cancel()  # cancels the engine's future too: the model thread skips the job
                self.metrics.error("cancelled")
                with contextlib.suppress(asyncio.CancelledError):
                    await call
                raise ApiError(499, "cancelled", "the client disconnected")
            return call.result()
        except Overloaded as err:
            raise ApiError(503, "overloaded", f"the server is at capacity: {err}; retry later",
                           {"Retry-After": RETRY_AFTER_S}) from None
        except GenerationFailed as err:  # the engine process failed the job or is gone
            raise failure_error(err) from None
        finally:
            for task in (call, watcher):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def complete(self, http_request: Any, handle: RequestHandle) -> Completion:
        return (await self.complete_all(http_request, [handle]))[0]

    async def complete_all(self, http_request: Any, handles: list[RequestHandle]) -> list[Completion]:
        """Wait for every result; a client that disconnects meanwhile cancels its generations."""
        watcher = asyncio.create_task(cancel_on_disconnect(http_request, handles))
        try:
            return list(await asyncio.gather(*(handle.result() for handle in handles)))
        except GenerationFailed as err:
            raise failure_error(err) from None
        finally:
            for handle in handles:
                handle.cancel()  # a no-op for finished ones; frees the others after a failure
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def wait_for_disconnect(http_request: Any) -> None:
    """The body is read already, so the next ASGI message is the client going away."""
    while True:
        message = await http_request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(http_request: Any, handles: list[RequestHandle]) -> None:
    await wait_for_disconnect(http_request)
    for handle in handles:
        handle.cancel()


def failure_error(err: GenerationFailed) -> ApiError:
    headers = {"Retry-After": RETRY_AFTER_S} if err.kind == "shutdown" else None
    return ApiError(FAILURE_STATUS.get(err.kind, 500), err.kind, err.message, headers)
