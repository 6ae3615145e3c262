"""TGI's API: POST /generate, POST /generate_stream (server-sent events), and POST / (both, by `stream`).

Shapes follow text-generation-inference: `generated_text` keeps a matched stop sequence, `details` lists
the tokens with their log-probabilities, and a stream sends one token object per event, the last one also
carrying `generated_text` and `details`. Errors inside a stream are an event `{"error", "error_type"}`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from tunebench.serve.engine import Completion, GenerationFailed, RequestHandle, TokenEvent
from tunebench.serve.schemas import TgiCompatRequest, TgiParameters, TgiRequest
from tunebench.serve.state import ServerState
from tunebench.serve.text import event_json

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data: dict[str, Any]) -> str:
    return f"data:{event_json(data)}\n\n"


def token_json(token: TokenEvent) -> dict[str, Any]:
    return {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}


def output_text(inputs: str, p: TgiParameters, completion: Completion) -> str:
    return inputs + completion.text if p.return_full_text else completion.text


def details_json(state: ServerState, p: TgiParameters, completion: Completion, prompt_ids: list[int]) -> dict:
    tokenizer = state.served.tokenizer
    prefill = [{"id": i, "text": tokenizer.decode([i]), "logprob": None} for i in prompt_ids] \
        if p.decoder_input_details else []
    return {"finish_reason": completion.finish_reason, "generated_tokens": completion.generated_tokens,
            "seed": completion.seed, "prefill": prefill, "tokens": [token_json(t) for t in completion.tokens],
            "top_tokens": None, "best_of_sequences": None}


async def generate_json(state: ServerState, http_request: Any, body: TgiRequest) -> dict[str, Any]:
    request = await state.build(state.builder.tgi, body.inputs, body.parameters)
    completion = await state.complete(http_request, state.submit(request))
    out: dict[str, Any] = {"generated_text": output_text(body.inputs, body.parameters, completion)}
    if body.parameters.details:
        out["details"] = details_json(state, body.parameters, completion, request.prompt_ids)
    return out


async def stream_response(state: ServerState, body: TgiRequest) -> Any:
    request = await state.build(state.builder.tgi, body.inputs, body.parameters)
    handle = state.submit(request)
    return StreamingResponse(stream_events(body, handle, len(request.prompt_ids)), media_type="text/event-stream",
                             headers=SSE_HEADERS)


async def stream_events(body: TgiRequest, handle: RequestHandle, input_length: int) -> AsyncIterator[str]:
    """One event per token, sent one token late so that the last event can carry the final text. Tokens that
    arrived together (the front end fell behind the engine) go out as one write."""
    pending: dict[str, Any] | None = None
    try:
        async for items in handle.batches():
            out = []
            for item in items:
                if isinstance(item, TokenEvent):
                    if pending is not None:
                        out.append(sse(pending))
                    index = pending["index"] + 1 if pending else 1
                    pending = {"index": index, "token": token_json(item), "top_tokens": None,
                               "generated_text": None, "details": None}
                elif pending is not None:
                    pending["generated_text"] = output_text(body.inputs, body.parameters, item)
                    pending["details"] = {"finish_reason": item.finish_reason,
                                          "generated_tokens": item.generated_tokens, "seed": item.seed,
                                          "input_length": input_length}
                    out.append(sse(pending))
            if out:
                yield "".join(out)
    except GenerationFailed as err:
        yield sse({"error": err.message, "error_type": err.kind})
    finally:
        handle.cancel()  # a no-op when finished; frees the slot when the client went away


def router(state: ServerState, dependencies: list[Any]) -> Any:
    api = APIRouter(tags=["TGI"], dependencies=dependencies)

    @api.post("/generate", summary="Generate text (TGI)")
    async def generate(body: TgiRequest, request: Request) -> dict[str, Any]:
        return await generate_json(state, request, body)

    @api.post("/generate_stream", summary="Generate text as server-sent events (TGI)",
              response_description="text/event-stream of token objects")
    async def generate_stream(body: TgiRequest) -> Any:
        return await stream_response(state, body)

    @api.post("/", summary="TGI's compatibility route: /generate (as a list) or /generate_stream by `stream`")
    async def compat(body: TgiCompatRequest, request: Request) -> Any:
        if body.stream:
            return await stream_response(state, body)
        return [await generate_json(state, request, body)]

    return api
