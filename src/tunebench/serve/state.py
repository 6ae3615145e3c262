"""What every route needs: the served model, the engine, the limits, and waiting on a request's result."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from tunebench.serve.engine import Completion, Engine, GenerationFailed, GenerationRequest, Overloaded, RequestHandle
from tunebench.serve.validate import ApiError, RequestBuilder

FAILURE_STATUS = {"timeout": 504, "cancelled": 499, "shutdown": 503, "internal": 500}
RETRY_AFTER_S = "1"


@dataclass
class ServerState:
    served: Any  # tunebench.serve.loading.ServedModel
    engine: Engine
    metrics: Any  # tunebench.serve.metrics.ServeMetrics
    options: Any  # tunebench.serve.options.ServerOptions
    builder: RequestBuilder
    started: float = field(default_factory=time.time)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        try:
            return self.engine.submit(request)
        except Overloaded as err:
            raise ApiError(503, "overloaded", f"the server is at capacity: {err}; retry later",
                           {"Retry-After": RETRY_AFTER_S}) from None

    async def call(self, fn: Any) -> Any:
        """Run `fn` on the model between decode steps (constrained classification)."""
        try:
            return await self.engine.call(fn)
        except Overloaded as err:
            raise ApiError(503, "overloaded", f"the server is at capacity: {err}; retry later",
                           {"Retry-After": RETRY_AFTER_S}) from None

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


async def cancel_on_disconnect(http_request: Any, handles: list[RequestHandle]) -> None:
    """The body is read already, so the next ASGI message is the client going away."""
    while True:
        message = await http_request.receive()
        if message["type"] == "http.disconnect":
            for handle in handles:
                handle.cancel()
            return


def failure_error(err: GenerationFailed) -> ApiError:
    headers = {"Retry-After": RETRY_AFTER_S} if err.kind == "shutdown" else None
    return ApiError(FAILURE_STATUS.get(err.kind, 500), err.kind, err.message, headers)
