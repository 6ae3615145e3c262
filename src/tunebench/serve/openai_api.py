"""OpenAI's API: POST /v1/completions, POST /v1/chat/completions (both streamable, both with usage), GET /v1/models.

The `model` field picks the base model or a loaded adapter. Output text stops before a matched stop string
(OpenAI's convention); a stream holds back the few characters that might begin one. A stream reports usage
on its last choice chunk, and in a separate usage-only chunk when `stream_options.include_usage` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunebench.serve.engine import Completion, GenerationFailed, GenerationRequest, RequestHandle, TokenEvent
from tunebench.serve.schemas import ChatRequest, CompletionRequest
from tunebench.serve.state import ServerState
from tunebench.serve.text import StopTrimmer, event_json

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    return f"data: {event_json(data)}\n\n"


def usage(completions: list[Completion]) -> dict[str, int]:
    prompt = sum(c.prompt_tokens for c in completions)
    generated = sum(c.generated_tokens for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}


def error_event(err: GenerationFailed) -> str:
    return sse({"error": {"message": err.message, "type": err.kind, "param": None, "code": err.kind}})


def submit_all(state: ServerState, requests: list[GenerationRequest]) -> list[RequestHandle]:
    """All or nothing: when the queue fills part-way, the ones already queued are cancelled."""
    handles: list[RequestHandle] = []
    try:
        for request in requests:
            handles.append(state.submit(request))
    except Exception:
        for handle in handles:
            handle.cancel()
        raise
    return handles


async def merged(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, Any]]:
    """(index, item) from several requests as they come; a failure is yielded as its GenerationFailed."""
    if len(handles) == 1:
        try:
            async for item in handles[0]:
                yield 0, item
        except GenerationFailed as err:
            yield 0, err
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(index: int, handle: RequestHandle) -> None:
        try:
            async for item in handle:
                await queue.put((index, item))
        except GenerationFailed as err:
            await queue.put((index, err))

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(handles)
        while remaining:
            index, item = await queue.get()
            remaining -= isinstance(item, Completion | GenerationFailed)
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Envelope:
    """id, created and model shared by every chunk of one response."""

    def __init__(self, prefix: str, obj: str, model: str) -> None:
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.object = obj
        self.created = int(time.time())
        self.model = model

    def wrap(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "system_fingerprint": "tunebench", "choices": choices, **extra}


def model_name(state: ServerState, request: GenerationRequest) -> str:
    return request.adapter or state.served.merged or state.served.model_id


# ------------------------------------------------------------------ completions


async def completions(state: ServerState, http_request: Any, body: CompletionRequest) -> Any:
    requests = await state.build(state.builder.completion, body)
    handles = submit_all(state, requests)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    envelope = Envelope("cmpl", "text_completion", model_name(state, requests[0]))
    if body.stream:
        events = completion_events(envelope, body, prompts, requests, handles)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    results = await state.complete_all(http_request, handles)
    choices = [{"index": i, "text": (prompts[i] if body.echo else "") + c.trimmed_text, "logprobs": None,
                "finish_reason": FINISH[c.finish_reason]} for i, c in enumerate(results)]
    return envelope.wrap(choices, usage=usage(results))


async def completion_events(envelope: Envelope, body: CompletionRequest, prompts: list[str],
                            requests: list[GenerationRequest], handles: list[RequestHandle]) -> AsyncIterator[str]:
    trimmers = [StopTrimmer(r.params.stop) for r in requests]
    texts = ["" for _ in handles]
    done: list[Completion] = []
    try:
        if body.echo:
            for i, prompt in enumerate(prompts):
                yield sse(envelope.wrap([{"index": i, "text": prompt, "logprobs": None, "finish_reason": None}]))
        async for i, item in merged(handles):
            if isinstance(item, GenerationFailed):
                yield error_event(item)
                return
            if isinstance(item, TokenEvent):
                texts[i] += "" if item.special else item.text
                chunk = trimmers[i].release(texts[i])
                choice = {"index": i, "text": chunk, "logprobs": None, "finish_reason": None}
            else:
                done.append(item)
                chunk = trimmers[i].release(item.text, final=True, stop_at=item.stop_at)
                choice = {"index": i, "text": chunk, "logprobs": None, "finish_reason": FINISH[item.finish_reason]}
            if choice["text"] or choice["finish_reason"]:
                last = len(done) == len(handles) and choice["finish_reason"]
                yield sse(envelope.wrap([choice], **({"usage": usage(done)} if last else {})))
        if body.stream_options and body.stream_options.include_usage:
            yield sse(envelope.wrap([], usage=usage(done)))
        yield DONE
    finally:
        for handle in handles:
            handle.cancel()


# ------------------------------------------------------------------ chat


async def chat_completions(state: ServerState, http_request: Any, body: ChatRequest) -> Any:
    request = await state.build(state.builder.chat, body)
    handle = state.submit(request)
    envelope = Envelope("chatcmpl", "chat.completion", model_name(state, request))
    if body.stream:
        envelope.object = "chat.completion.chunk"
        events = chat_events(envelope, body, request, handle)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    completion = await state.complete(http_request, handle)
    message = {"role": "assistant", "content": completion.trimmed_text}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH[completion.finish_reason]}
    return envelope.wrap([choice], usage=usage([completion]))


def delta(content: str | None, finish: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": {"role": "assistant", "content": content, "tool_calls": None}, "logprobs": None,
            "finish_reason": finish}


async def chat_events(envelope: Envelope, body: ChatRequest, request: GenerationRequest,
                      handle: RequestHandle) -> AsyncIterator[str]:
    trimmer = StopTrimmer(request.params.stop)
    text = ""
    try:
        yield sse(envelope.wrap([delta("")]))
        async for _, item in merged([handle]):
            if isinstance(item, GenerationFailed):
                yield error_event(item)
                return
            if isinstance(item, TokenEvent):
                text += "" if item.special else item.text
                chunk = trimmer.release(text)
                if chunk:
                    yield sse(envelope.wrap([delta(chunk)]))
            else:
                chunk = trimmer.release(item.text, final=True, stop_at=item.stop_at)
                yield sse(envelope.wrap([delta(chunk or None, FINISH[item.finish_reason])], usage=usage([item])))
                if body.stream_options and body.stream_options.include_usage:
                    yield sse(envelope.wrap([], usage=usage([item])))
        yield DONE
    finally:
        handle.cancel()


# ------------------------------------------------------------------ routes


def router(state: ServerState, dependencies: list[Any]) -> Any:
    api = APIRouter(prefix="/v1", tags=["OpenAI"], dependencies=dependencies)

    @api.get("/models", summary="The base model and the loaded adapters")
    async def models() -> dict[str, Any]:
        served = state.served
        created = int(state.started)
        data = [{"id": served.merged or served.model_id, "object": "model", "created": created,
                 "owned_by": "tunebench", "root": served.model_id, "parent": None}]
        # Names only: the adapters' directories on the server are none of a client's business.
        data += [{"id": name, "object": "model", "created": created, "owned_by": "tunebench",
                  "root": name, "parent": served.model_id} for name in served.adapters]
        return {"object": "list", "data": data}

    @api.post("/completions", summary="Text completion (OpenAI)")
    async def create_completion(body: CompletionRequest, request: Request) -> Any:
        return await completions(state, request, body)

    @api.post("/chat/completions", summary="Chat completion (OpenAI)")
    async def create_chat_completion(body: ChatRequest, request: Request) -> Any:
        return await chat_completions(state, request, body)

    return api
