"""What a generation request is on its way through an engine: the request, its handle on the event loop,
its engine-side state (tokens, text, timers, finish), what streams back, and the engine's limits."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from tunebench.serve.sampling import RowState, SamplingParams
from tunebench.serve.text import IncrementalDetokenizer, find_stop, stop_search_start

FinishReason = Literal["length", "eos_token", "stop_sequence"]


class Overloaded(Exception):
    """The queue is full: the client should retry later."""


def admit_one(in_flight: int, capacity: int, slots: int, max_queue: int) -> int:
    """One more request in flight, or Overloaded: the queue is bounded, and memory with it (the in-process
    engine and the split front end count the same way)."""
    if in_flight >= capacity:
        raise Overloaded(f"{in_flight} requests in flight, the limit is {capacity} "
                         f"({slots} running + {max_queue} queued)")
    return in_flight + 1


class GenerationFailed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # timeout | cancelled | internal | shutdown
        self.message = message


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # a loaded adapter's name; None: the base weights


@dataclass(frozen=True)
class TokenEvent:
    id: int
    text: str  # what the token adds to the output; a special token's own text (not part of the output)
    logprob: float
    special: bool


@dataclass(frozen=True)
class Completion:
    text: str  # everything generated, special tokens removed, a matched stop string included (as TGI does)
    finish_reason: FinishReason
    generated_tokens: int
    prompt_tokens: int
    seed: int | None
    stop_at: int | None  # where the matched stop string starts in `text`
    tokens: tuple[TokenEvent, ...]

    @property
    def trimmed_text(self) -> str:
        """The text without the stop string (OpenAI's convention)."""
        return self.text if self.stop_at is None else self.text[:self.stop_at]


@dataclass(frozen=True)
class EngineLimits:
    max_batch: int = 32  # sequences decoded together (--max-concurrency)
    max_queue: int = 256  # requests waiting for a slot before the server answers 503
    request_timeout: float = 300.0  # seconds from arrival to the last token
    prefill_budget: int = 4096  # padded prompt tokens in one prefill launch (one per iteration, at least one prompt)
    max_sequence_tokens: int = 0  # prompt + generated tokens one KV-cache slot holds; 0: the model's context
    # While sequences decode, a waiting request is held back up to this long (or until PREFILL_GROUP wait) so
    # prompts are prefilled in groups: each eager prefill pass stalls every running sequence for its duration.
    prefill_delay: float = 0.05  # (0.03 before issue 20: larger groups, ~20 ms more TTFT under load)
    # After a prefill, another one runs before the next decode step while waiting >= this x running requests
    # (TGI's --waiting-served-ratio); inf: one prefill per iteration, 0: fill every free slot first.
    waiting_served_ratio: float = math.inf


class RequestHandle:
    """The event-loop side of one request: iterate it for TokenEvents, then one Completion."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    def cancel(self) -> None:
        """The client is gone: the engine drops the sequence at its next step and frees the slot."""
        self.cancelled = True

    async def __aiter__(self) -> AsyncIterator[TokenEvent | Completion]:
        while True:
            item = await self._queue.get()
            if isinstance(item, GenerationFailed):
                raise item
            yield item
            if isinstance(item, Completion):
                return

    async def batches(self) -> AsyncIterator[list[TokenEvent | Completion]]:
        """Like iterating, but everything already queued comes at once (at least one item): a stream then
        writes the tokens that piled up while the front end was busy as one HTTP chunk, not one each."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            for i, item in enumerate(items):
                if isinstance(item, GenerationFailed):
                    if i:
                        yield items[:i]
                    raise item
                if isinstance(item, Completion):
                    yield items[:i + 1]
                    return
            yield items

    async def result(self) -> Completion:
        async for item in self:
            if isinstance(item, Completion):
                return item
        raise GenerationFailed("internal", "the engine ended the request without a result")


class Sequence:
    """The engine side of one request: its tokens, text, timers and finish state."""

    def __init__(self, request: GenerationRequest, handle: RequestHandle, engine: Any) -> None:
        self.request = request
        self.params = request.params
        self.handle = handle
        self.detok = IncrementalDetokenizer(engine.tokenizer, request.prompt_ids)
        self.eos_ids = engine.eos_ids
        self.special_ids = engine.special_ids
        self.tokenizer = engine.tokenizer
        self.tokens: list[TokenEvent] = []
        self.finish_reason: FinishReason | None = None
        self.stop_at: int | None = None
        self.arrival = time.monotonic()
        self.deadline = self.arrival + engine.limits.request_timeout
        self.last_token_at: float | None = None
        self.row: RowState | None = None
        self.ended = False  # its Completion or failure was emitted: later tokens of a step in flight are dropped

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def expired(self, now: float) -> bool:
        return now > self.deadline

    def accept(self, token_id: int, logprob: float) -> TokenEvent:
        """Record a generated token and decide whether the sequence is finished."""
        special = token_id in self.special_ids
        before = len(self.detok.text)
        delta = self.detok.add(token_id)
        text = self.tokenizer.decode([token_id]) if special else delta
        event = TokenEvent(token_id, text, logprob, special)
        self.tokens.append(event)
        if self.row is not None:
            self.row.generated.append(token_id)
        stop = self.params.stop
        if token_id in self.eos_ids and not self.params.ignore_eos:
            self.finish_reason = "eos_token"
        elif stop and (at := find_stop(self.detok.text, stop, stop_search_start(before, stop))) is not None:
            self.finish_reason, self.stop_at = "stop_sequence", at
        elif len(self.tokens) >= self.params.max_new_tokens:
            self.finish_reason = "length"
        return event

    def completion(self) -> Completion:
        if self.finish_reason != "stop_sequence":
            self.detok.flush()
        assert self.finish_reason is not None
        return Completion(self.detok.text, self.finish_reason, len(self.tokens), len(self.request.prompt_ids),
                          self.params.seed, self.stop_at, tuple(self.tokens))
