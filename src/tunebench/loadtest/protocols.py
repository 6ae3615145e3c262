"""The three wire protocols a load test speaks: TGI, OpenAI completions, and the original's naive /predict.

Each protocol knows its route, how to write a request body, and how to read a reply (a JSON body, or a
server-sent event stream) into text and token counts. Counts the server reports (TGI `details`, OpenAI
`usage`) are taken as given; what it does not report is counted later with a tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tunebench.errors import UserError

APIS = ("tgi", "openai", "naive")


class BadReply(Exception):
    """A 2xx reply whose body is not the JSON the protocol promises."""


@dataclass
class Reply:
    text: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass
class StreamEvent:
    tokens: int = 0  # output tokens this event carries (0 for control events)
    done: bool = False
    reply: Reply | None = None  # the final counts or text, when this event carries them


def _load(data: bytes | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadReply(f"not JSON: {err}") from None


def _object(data: bytes | str) -> dict[str, Any]:
    obj = _load(data)
    if not isinstance(obj, dict):
        raise BadReply("the reply is not a JSON object")
    if "error" in obj:
        raise BadReply(f"error in the reply: {str(obj['error'])[:200]}")
    return obj


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Api:
    name = ""
    streams = True

    def path(self, stream: bool) -> str:
        raise NotImplementedError

    def body(self, prompt: str, *, max_new_tokens: int, ignore_eos: bool, stream: bool, model: str | None) -> dict:
        raise NotImplementedError

    def parse(self, data: bytes) -> Reply:
        raise NotImplementedError

    def parse_event(self, payload: str) -> StreamEvent:
        raise NotImplementedError


class TgiApi(Api):
    """Text Generation Inference: POST /generate and /generate_stream."""

    name = "tgi"

    def path(self, stream: bool) -> str:
        return "/generate_stream" if stream else "/generate"

    def body(self, prompt: str, *, max_new_tokens: int, ignore_eos: bool, stream: bool, model: str | None) -> dict:
        params: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "details": True}
        if model:
            params["adapter_id"] = model  # TGI's multi-LoRA field: which loaded adapter answers
        if ignore_eos:
            params["ignore_eos"] = True  # an extension (vLLM has it, tunebench serve has it); TGI ignores it
        return {"inputs": prompt, "parameters": params}

    def parse(self, data: bytes) -> Reply:
        obj = _load(data)
        if isinstance(obj, list) and obj:  # TGI answers a list when the request body was a list
            obj = obj[0]
        if not isinstance(obj, dict) or not isinstance(obj.get("generated_text"), str):
            raise BadReply("no 'generated_text' in the reply")
        details = obj.get("details") or {}
        return Reply(obj["generated_text"], _int_or_none(details.get("prefill_tokens")),
                     _int_or_none(details.get("generated_tokens")))

    def parse_event(self, payload: str) -> StreamEvent:
        obj = _object(payload)
        token = obj.get("token") or {}
        if not isinstance(token, dict):
            raise BadReply("the stream event's 'token' is not an object")
        tokens = 0 if token.get("special") or "text" not in token else 1
        if obj.get("generated_text") is None:
            return StreamEvent(tokens)
        details = obj.get("details") or {}
        reply = Reply(obj["generated_text"], None, _int_or_none(details.get("generated_tokens")))
        return StreamEvent(tokens, done=True, reply=reply)


class OpenAiApi(Api):
    """OpenAI-compatible completions (vLLM, TGI's /v1, tunebench serve): POST /v1/completions."""

    name = "openai"

    def path(self, stream: bool) -> str:
        return "/v1/completions"

    def body(self, prompt: str, *, max_new_tokens: int, ignore_eos: bool, stream: bool, model: str | None) -> dict:
        body: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_new_tokens, "temperature": 0,
                                "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}  # the last chunk then carries the token counts
        if ignore_eos:
            body["ignore_eos"] = True
        return body

    @staticmethod
    def _usage(obj: dict[str, Any]) -> tuple[int | None, int | None]:
        usage = obj.get("usage") or {}
        return _int_or_none(usage.get("prompt_tokens")), _int_or_none(usage.get("completion_tokens"))

    def parse(self, data: bytes) -> Reply:
        obj = _object(data)
        choices = obj.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0].get("text"), str):
            raise BadReply("no 'choices[0].text' in the reply")
        return Reply(choices[0]["text"], *self._usage(obj))

    def parse_event(self, payload: str) -> StreamEvent:
        if payload.strip() == "[DONE]":
            return StreamEvent(done=True)
        obj = _object(payload)
        choices = obj.get("choices") or []
        text = choices[0].get("text") if choices and isinstance(choices[0], dict) else None
        reply = Reply(None, *self._usage(obj)) if obj.get("usage") else None
        return StreamEvent(1 if text else 0, reply=reply)


class NaiveApi(Api):
    """The original study's FastAPI server: POST /predict {"prompt"} -> {"prediction"}."""

    name = "naive"
    streams = False

    def path(self, stream: bool) -> str:
        return "/predict"

    def body(self, prompt: str, *, max_new_tokens: int, ignore_eos: bool, stream: bool, model: str | None) -> dict:
        return {"prompt": prompt}

    def parse(self, data: bytes) -> Reply:
        obj = _object(data)
        if not isinstance(obj.get("prediction"), str):
            raise BadReply("no 'prediction' in the reply")
        return Reply(obj["prediction"])


def api_for(name: str) -> Api:
    apis: dict[str, type[Api]] = {"tgi": TgiApi, "openai": OpenAiApi, "naive": NaiveApi}
    if name not in apis:
        raise UserError(f"unknown --api '{name}'", f"allowed: {', '.join(APIS)}")
    return apis[name]()
