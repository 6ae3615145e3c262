"""From a validated request body to a `GenerationRequest`: tokenization, the server's limits, adapter choice.

Every refusal is an `ApiError` with a status, a kind (the `tunebench_errors` label) and a message that
names the field, the value and the limit. The app renders it in TGI's shape (`{"error", "error_type"}`) or
OpenAI's (`{"error": {"message", "type", "code"}}`) depending on the route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunebench.serve.engine import GenerationRequest
from tunebench.serve.sampling import SamplingParams
from tunebench.serve.schemas import ChatRequest, CompletionRequest, OpenAISampling, TgiParameters

MAX_STOP_CHARS = 256
# A text longer than this many characters per allowed token is first judged by a prefix of that size, so a huge
# prompt costs a bounded tokenization; the margin covers a token split by the cut.
PREFIX_CHARS_PER_TOKEN = 8
PREFIX_MARGIN_TOKENS = 16
# What Hugging Face's clients put in `model` when none is named (huggingface_hub sends "dummy", older "tgi").
PLACEHOLDER_MODELS = (None, "", "tgi", "dummy")


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind  # validation | auth | overloaded | timeout | not_found | internal | ...
        self.message = message
        self.headers = headers or {}


def invalid(message: str) -> ApiError:
    return ApiError(422, "validation", message)


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_new_tokens: int
    max_stop_sequences: int
    context_length: int

    @classmethod
    def of(cls, served: Any, options: Any) -> Limits:
        context = served.context_length
        return cls(min(options.max_input_tokens, context - 1), min(options.max_new_tokens, context - 1),
                   options.max_stop_sequences, context)


class RequestBuilder:
    def __init__(self, served: Any, limits: Limits) -> None:
        self.served = served
        self.tokenizer = served.tokenizer
        self.limits = limits

    # ------------------------------------------------------------ shared checks

    def encode(self, text: str, *, chat: bool = False, truncate: int | None = None, field: str = "inputs") -> list[int]:
        if truncate is None:
            self.refuse_long_prefix(text, chat=chat, field=field)
        ids = self.tokenize(text, chat=chat)
        if truncate is not None:
            ids = ids[-truncate:]
        if not ids:
            raise invalid(f"{field} must not be empty")
        if len(ids) > self.limits.max_input_tokens:
            raise invalid(f"{field} has {len(ids)} tokens; the limit is {self.limits.max_input_tokens} "
                          "(the server's --max-input-tokens)")
        return ids

    def tokenize(self, text: str, *, chat: bool = False) -> list[int]:
        from tunebench.evaluate.generation import encode

        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if chat else encode(self.tokenizer, text)

    def refuse_long_prefix(self, text: str, *, chat: bool, field: str) -> None:
        """Stop tokenizing once the limit is passed: a text far longer than the limit could need is judged by a
        prefix, cut at whitespace (where tokens end), whose count is a lower bound of the whole text's."""
        limit = self.limits.max_input_tokens
        window = limit * PREFIX_CHARS_PER_TOKEN
        if len(text) <= window:
            return
        cut = max(text.rfind(" ", 0, window), text.rfind("\n", 0, window))
        head = self.tokenize(text[:cut if cut > window // 2 else window], chat=chat)
        if len(head) > limit + PREFIX_MARGIN_TOKENS:
            raise invalid(f"{field} has more than {limit} tokens ({len(head)} in its first {window:,} characters "
                          f"alone); the limit is {limit} (the server's --max-input-tokens)")

    def max_new(self, requested: int | None, prompt_tokens: int, field: str) -> int:
        room = self.limits.context_length - prompt_tokens
        if requested is None:
            return max(1, min(self.limits.max_new_tokens, room))
        if requested > self.limits.max_new_tokens:
            raise invalid(f"{field} must be <= {self.limits.max_new_tokens} (the server's --max-new-tokens), "
                          f"got {requested}")
        if requested > room:
            raise invalid(f"inputs ({prompt_tokens} tokens) + {field} ({requested}) must be <= "
                          f"{self.limits.context_length}, the model's context length")
        return requested

    def stops(self, stop: list[str], field: str) -> tuple[str, ...]:
        if len(stop) > self.limits.max_stop_sequences:
            raise invalid(f"{field}: at most {self.limits.max_stop_sequences} stop sequences, got {len(stop)}")
        for s in stop:
            if not s or len(s) > MAX_STOP_CHARS:
                raise invalid(f"{field}: every stop sequence must have 1 to {MAX_STOP_CHARS} characters")
        return tuple(stop)

    def adapter(self, name: str | None, *, openai: bool) -> str | None:
        """A request's model/adapter name to the adapter to run (None: the base weights)."""
        served = self.served
        if name in PLACEHOLDER_MODELS:
            return served.default_adapter
        if name == served.model_id or name == served.merged:
            return None
        if name in served.adapters:
            return name
        base, _, adapter = (name or "").rpartition(":")
        if openai and adapter in served.adapters and base in (served.model_id, served.merged):
            return adapter  # SGLang's way of naming an adapter, `<model>:<adapter>`, so its clients work here
        field = "model" if openai else "parameters.adapter_id"
        message = f"{field}: unknown model '{name}'; available: {', '.join(served.model_names())}"
        raise ApiError(404, "not_found", message) if openai else invalid(message)

    # ------------------------------------------------------------ TGI

    def tgi(self, inputs: str, p: TgiParameters) -> GenerationRequest:
        for message in unsupported_tgi(p):
            raise invalid(message)
        ids = self.encode(inputs, truncate=p.truncate)
        sample = p.do_sample or p.temperature not in (None, 1.0) or bool(p.top_k) or p.top_p is not None
        params = SamplingParams(
            max_new_tokens=self.max_new(p.max_new_tokens, len(ids), "parameters.max_new_tokens"),
            do_sample=sample, temperature=p.temperature or 1.0, top_k=p.top_k or 0, top_p=p.top_p or 1.0,
            repetition_penalty=p.repetition_penalty or 1.0, frequency_penalty=p.frequency_penalty or 0.0,
            seed=p.seed, stop=self.stops(p.stop, "parameters.stop"), ignore_eos=p.ignore_eos).resolved()
        return GenerationRequest(ids, params, self.adapter(p.adapter_id, openai=False))

    # ------------------------------------------------------------ OpenAI

    def openai_params(self, body: OpenAISampling, max_tokens: int | None, prompt_tokens: int,
                      field: str) -> SamplingParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        temperature = 1.0 if body.temperature is None else body.temperature
        return SamplingParams(
            max_new_tokens=self.max_new(max_tokens, prompt_tokens, field), do_sample=temperature > 0,
            temperature=temperature or 1.0, top_k=max(body.top_k or 0, 0), top_p=body.top_p or 1.0,
            repetition_penalty=body.repetition_penalty or 1.0, frequency_penalty=body.frequency_penalty,
            presence_penalty=body.presence_penalty, seed=body.seed, stop=self.stops(stop, "stop"),
            ignore_eos=body.ignore_eos).resolved()

    def completion(self, body: CompletionRequest) -> list[GenerationRequest]:
        if body.logprobs:
            raise invalid("logprobs is not supported by this server")
        adapter = self.adapter(body.model, openai=True)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        out = []
        for i, prompt in enumerate(prompts):
            ids = self.encode(prompt, field="prompt" if len(prompts) == 1 else f"prompt[{i}]")
            out.append(GenerationRequest(ids, self.openai_params(body, body.max_tokens, len(ids), "max_tokens"),
                                         adapter))
        return out

    def chat(self, body: ChatRequest) -> GenerationRequest:
        if body.logprobs:
            raise invalid("logprobs is not supported by this server")
        if body.tools:
            raise invalid("tools are not supported by this server")
        adapter = self.adapter(body.model, openai=True)
        ids = self.encode(chat_prompt(self.tokenizer, body), chat=True, field="messages")
        max_tokens = body.max_completion_tokens or body.max_tokens
        field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        return GenerationRequest(ids, self.openai_params(body, max_tokens, len(ids), field), adapter)

    # ------------------------------------------------------------ plain prompts (/predict, /summarize)

    def plain(self, prompt: str, max_new_tokens: int | None, stop: list[str], adapter: str | None,
              field: str = "prompt") -> GenerationRequest:
        ids = self.encode(prompt, field=field)
        params = SamplingParams(max_new_tokens=self.max_new(max_new_tokens, len(ids), "max_new_tokens"),
                                stop=tuple(stop))
        return GenerationRequest(ids, params, adapter)


def unsupported_tgi(p: TgiParameters) -> list[str]:
    problems = []
    if p.best_of not in (None, 1):
        problems.append("parameters.best_of: only 1 is supported by this server")
    if p.grammar is not None:
        problems.append("parameters.grammar is not supported by this server")
    if p.typical_p is not None:
        problems.append("parameters.typical_p is not supported by this server")
    if p.watermark:
        problems.append("parameters.watermark is not supported by this server")
    if p.top_n_tokens:
        problems.append("parameters.top_n_tokens is not supported by this server")
    return problems


def chat_prompt(tokenizer: Any, body: ChatRequest) -> str:
    """The conversation through the tokenizer's chat template; a plain 'role: text' transcript without one."""
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    if not getattr(tokenizer, "chat_template", None):
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except TemplateError as err:
        raise invalid(f"messages: the model's chat template refused them: {err}") from None
