"""Request bodies of every route, as pydantic models: FastAPI validates them (422) and publishes them in OpenAPI.

Field names and ranges follow TGI's and OpenAI's APIs, so their clients work unchanged; unknown fields are
ignored as those servers do. Limits that depend on the server (input length, max_new_tokens, number of stop
sequences, context length) are checked after tokenization, in `tunebench.serve.requests`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tunebench.serve.sampling import MAX_SEED


def _utf8(text: str) -> str:
    """Lone surrogates (JSON allows them) cannot reach the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


# ------------------------------------------------------------------ TGI


class TgiParameters(Body):
    adapter_id: Text | None = Field(None, description="a loaded adapter's name; none: the server's default")
    best_of: int | None = Field(None, ge=1, description="only 1 is supported")
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    grammar: Any | None = Field(None, description="not supported")
    max_new_tokens: int | None = Field(None, ge=1, description="none: up to the server's limit")
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)
    return_full_text: bool | None = False
    seed: Seed | None = None
    stop: list[Text] = Field(default_factory=list)
    temperature: float | None = Field(None, gt=0, le=100)
    top_k: int | None = Field(None, gt=0)
    top_p: float | None = Field(None, gt=0, lt=1)
    truncate: int | None = Field(None, gt=0, description="keep only the last N input tokens")
    typical_p: float | None = Field(None, gt=0, lt=1, description="not supported")
    watermark: bool = Field(False, description="not supported")
    top_n_tokens: int | None = Field(None, ge=0, description="not supported")
    ignore_eos: bool = Field(False, description="extension (as vLLM's): keep generating after EOS")


class TgiRequest(Body):
    inputs: Text
    parameters: TgiParameters = Field(default_factory=TgiParameters)


class TgiCompatRequest(TgiRequest):
    stream: bool = False


# ------------------------------------------------------------------ OpenAI


class StreamOptions(Body):
    include_usage: bool = False


class OpenAISampling(Body):
    model: Text | None = Field(None, description="the base model or an adapter (GET /v1/models)")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; default 1")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: Seed | None = None
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None
    top_k: int | None = Field(None, ge=-1, description="extension (vLLM): -1 or 0 for off")
    repetition_penalty: float | None = Field(None, ge=0.01, le=100, description="extension (vLLM)")
    ignore_eos: bool = Field(False, description="extension (vLLM): keep generating after EOS")


class CompletionRequest(OpenAISampling):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=16)]
    max_tokens: int | None = Field(None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, description="not supported")
    best_of: int | None = Field(None, ge=1, le=1)


class TextPart(Body):
    type: Literal["text"] = "text"
    text: Text


class ChatMessage(Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(OpenAISampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="not supported")
    tools: list[Any] | None = Field(None, description="not supported")


# ------------------------------------------------------------------ the original's API and the task endpoints


class PredictRequest(Body):
    prompt: Text
    max_new_tokens: int | None = Field(None, ge=1)


class ClassifyRequest(Body):
    text: Text


class SummarizeRequest(Body):
    dialogue: Text
    max_new_tokens: int | None = Field(None, ge=1)


class TaskRequest(Body):
    """A generation run's input fields by name (its data.inputs), e.g. {"inputs": {"message": "..."}}."""

    inputs: dict[str, Text]
    max_new_tokens: int | None = Field(None, ge=1)
