"""Request size limits, enforced before a body reaches JSON parsing or the tokenizer.

Without them one 50 MB prompt was read whole, parsed, and tokenized on the event loop before the token
limit refused it: every route (``/health`` too) stalled for a minute and the process kept gigabytes. The byte
limit follows from ``--max-input-tokens`` so that no request the token limit would accept is refused: a
token is rarely more than a few bytes, and a JSON-escaped non-ASCII character is at most 12.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException

BYTES_PER_TOKEN = 32  # generous: ~4 bytes per token in English, ≤ 12 per JSON-escaped character
MAX_PROMPTS = 16  # /v1/completions accepts a list of up to 16 prompts, each up to the token limit
MIN_BODY_BYTES = 1 << 20


def body_limit(max_input_tokens: int) -> int:
    """The largest request body the server reads, in bytes."""
    return max(MIN_BODY_BYTES, MAX_PROMPTS * max_input_tokens * BYTES_PER_TOKEN)


def too_large_message(limit: int, max_input_tokens: int, size: int | None) -> str:
    what = f"has {size:,} bytes" if size is not None else f"is longer than {limit:,} bytes"
    return (f"the request body {what}; the limit is {limit:,} bytes ({BYTES_PER_TOKEN} bytes per token of the "
            f"server's --max-input-tokens {max_input_tokens}, for up to {MAX_PROMPTS} prompts)")


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body without Content-Length (chunked) passes the limit; FastAPI re-raises
    HTTPExceptions from body reading, so the app's handler answers 413 in the route's protocol."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


class BodyLimitMiddleware:
    """413 for a declared Content-Length over the limit before a byte is read; chunked bodies are counted as
    they arrive and refused as soon as they pass it (the rest is never read: uvicorn closes the connection)."""

    def __init__(self, app: Any, limit: int, max_input_tokens: int,
                 refuse: Callable[[str, int, str, str], Any]) -> None:
        self.app = app
        self.limit = limit
        self.max_input_tokens = max_input_tokens
        self.refuse = refuse  # (path, status, kind, message) -> an ASGI response in the route's protocol

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared is not None and declared > self.limit:
            message = too_large_message(self.limit, self.max_input_tokens, declared)
            response = self.refuse(scope["path"], 413, "too_large", message)
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(too_large_message(self.limit, self.max_input_tokens, None))
            return message

        await self.app(scope, counted, send)


def content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # h11 refuses a malformed one before the app sees it
    return None
