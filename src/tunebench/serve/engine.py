"""The two engines behind the server: `naive` (the original baseline) and `batched` (continuous batching).

Both run the model in one background thread that owns it; the HTTP side talks to them through `submit`
(returns a `RequestHandle` to stream from) and `call` (runs a function on the model between decode steps,
for constrained classification). Tokens travel back to the event loop in one `call_soon_threadsafe` per
step, whatever the batch size.

`naive` takes one request at a time through `model.generate`, exactly as the original FastAPI server did.

`batched` keeps a running batch and a queue. Between decode steps it drops finished, cancelled and expired
sequences and admits waiting ones (each prefilled alone, up to a prefill token budget per iteration, so a
long prompt does not stall the running batch for long); `step()` then decodes one token for every running
sequence in a single forward pass. The batch's KV cache is one transformers `DynamicCache` whose rows are
left-padded to a common length: a new sequence's cache is padded (or the batch's is) and concatenated along
the batch dimension, a leaving sequence is index-selected out, and columns that became padding in every
row are trimmed. Several LoRA adapters share a batch through peft's mixed-batch `adapter_names` argument.

The seam for the GPU work is `RunningBatch` (the KV layout) and `BatchedEngine.step` (one decode step): a
static or paged cache with CUDA graphs replaces those two without touching the scheduler or the HTTP side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal

from tunebench.serve.sampling import RowState, SamplingParams, choose_tokens
from tunebench.serve.text import IncrementalDetokenizer, find_stop, stop_search_start

log = logging.getLogger("tunebench.serve")

FinishReason = Literal["length", "eos_token", "stop_sequence"]
ENGINES = ("batched", "naive")
BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class Overloaded(Exception):
    """The queue is full: the client should retry later."""


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
    prefill_budget: int = 4096  # prompt tokens prefilled per scheduler iteration (at least one prompt)


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

    async def result(self) -> Completion:
        async for item in self:
            if isinstance(item, Completion):
                return item
        raise GenerationFailed("internal", "the engine ended the request without a result")


class Sequence:
    """The engine side of one request: its tokens, text, timers and finish state."""

    def __init__(self, request: GenerationRequest, handle: RequestHandle, engine: Engine) -> None:
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
        """Count one more request in flight, or refuse it: the queue is bounded, memory with it."""
        if self._in_flight >= self.capacity:
            raise Overloaded(f"{self._in_flight} requests in flight, the limit is {self.capacity} "
                             f"({self.slots} running + {self.limits.max_queue} queued)")
        self._in_flight += 1

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


# ==================================================================== naive


class NaiveEngine(Engine):
    """One request at a time through `model.generate`: the original server's behaviour, kept as the baseline."""

    kind = "naive"
    slots = 1

    def _iteration(self) -> None:
        self._prune_waiting()
        if not self._waiting:
            return
        seq = self._waiting.popleft()
        self._flush()
        self._admitted(seq)
        try:
            self._generate(seq)
        except Exception as err:
            log.exception("generation failed")
            self._fail(seq, GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))
            return
        failure = None if seq.done else self._drop_reason(seq, time.monotonic())
        if failure:
            self._fail(seq, failure)

    def _generate(self, seq: Sequence) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        from tunebench.evaluate.generation import generation_config

        p = seq.params
        config = generation_config(self.model, self.tokenizer, max_new_tokens=p.max_new_tokens,
                                   do_sample=p.do_sample, temperature=p.temperature, top_p=p.top_p,
                                   repetition_penalty=p.repetition_penalty)
        config.eos_token_id = None  # the sequence decides when to stop (EOS, stop strings, ignore_eos)
        if p.do_sample:
            config.top_k = p.top_k
            torch.manual_seed(p.seed if p.seed is not None else 0)
        ids = torch.tensor([seq.request.prompt_ids], device=self.device)
        last_logits = LastLogits(self.model)
        processors = LogitsProcessorList([FrequencyPresence(seq)] if p.frequency_penalty or p.presence_penalty
                                         else [])
        try:
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                logits_processor=processors,
                                stopping_criteria=StoppingCriteriaList([TokenTap(self, seq, last_logits)]),
                                **self._adapter_kwargs([seq]))
        finally:
            last_logits.remove()


class LastLogits:
    """Keeps the last position's logits of each forward pass (for the log-probability of the chosen token)."""

    def __init__(self, model: Any) -> None:
        self.row: Any = None
        self._hook = model.get_output_embeddings().register_forward_hook(self._keep)

    def _keep(self, _module: Any, _inputs: Any, out: Any) -> None:
        self.row = out[0, -1]

    def remove(self) -> None:
        self._hook.remove()


class TokenTap:
    """A StoppingCriteria that sees every new token first: it streams it, then says whether to stop.

    Stopping criteria run once per step with the new token at the end of `input_ids`, in every recent
    transformers (a streamer's place in the loop has moved between versions), so tokens are taken here.
    """

    def __init__(self, engine: NaiveEngine, seq: Sequence, last_logits: LastLogits) -> None:
        self.engine, self.seq, self.last_logits = engine, seq, last_logits

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        seq = self.seq
        token = int(input_ids[0, -1])
        logprob = float(torch.log_softmax(self.last_logits.row.float(), dim=-1)[token])
        self.engine.metrics.observe_step(1)
        self.engine._token(seq, token, logprob)
        self.engine._flush()  # stream every token as it is produced
        stop = seq.done or seq.handle.cancelled or seq.expired(time.monotonic())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class FrequencyPresence:
    """A LogitsProcessor applying OpenAI's frequency and presence penalties (transformers has neither)."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.prompt_len = len(seq.request.prompt_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        from tunebench.serve.sampling import apply_frequency_presence

        p = self.seq.params
        return apply_frequency_presence(scores[0], input_ids[0, self.prompt_len:], p.frequency_penalty,
                                        p.presence_penalty)[None]


# ==================================================================== batched


class RunningBatch:
    """The running sequences and their shared, left-padded KV cache.

    Row i of every tensor belongs to `seqs[i]`. `next_tokens` holds each row's last sampled token, which is
    not in the cache yet; `positions` its position id (the count of real tokens before it).
    """

    def __init__(self) -> None:
        self.seqs: list[Sequence] = []
        self.cache: Any = None
        self.mask: Any = None  # (rows, cached columns) 1 = real token, 0 = padding
        self.positions: Any = None
        self.next_tokens: Any = None

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: Sequence, cache: Any, first_token: int) -> None:
        import torch

        length = kv_length(cache)
        device = self.device_of(cache)
        mask = torch.ones((1, length), dtype=torch.long, device=device)
        position = torch.tensor([length], device=device)
        token = torch.tensor([first_token], device=device)
        if not self.seqs:
            self.cache, self.mask, self.positions, self.next_tokens = cache, mask, position, token
        else:
            width = max(self.mask.shape[1], length)
            mine, theirs = width - self.mask.shape[1], width - length
            for layer, other in zip(cache_layers(self.cache), cache_layers(cache), strict=True):
                layer.keys = torch.cat([left_pad(layer.keys, mine), left_pad(other.keys, theirs)])
                layer.values = torch.cat([left_pad(layer.values, mine), left_pad(other.values, theirs)])
            self.mask = torch.cat([left_pad_2d(self.mask, mine), left_pad_2d(mask, theirs)])
            self.positions = torch.cat([self.positions, position])
            self.next_tokens = torch.cat([self.next_tokens, token])
        self.seqs.append(seq)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in order); trim columns that are padding in every remaining row."""
        import torch

        if len(rows) == len(self.seqs):
            return
        if not rows:
            self.__init__()
            return
        index = torch.tensor(rows, device=self.mask.device)
        self.mask = self.mask[index]
        first = int((self.mask.sum(dim=0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in cache_layers(self.cache):
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]
        self.positions = self.positions[index]
        self.next_tokens = self.next_tokens[index]
        self.seqs = [self.seqs[i] for i in rows]

    @staticmethod
    def device_of(cache: Any) -> Any:
        return cache_layers(cache)[0].keys.device


def cache_layers(cache: Any) -> list[Any]:
    return cache.layers


def kv_length(cache: Any) -> int:
    return cache_layers(cache)[0].keys.shape[-2]


def left_pad(tensor: Any, n: int) -> Any:
    """Pad a (batch, heads, time, dim) cache tensor with n zero columns on the left of the time axis."""
    import torch.nn.functional as F

    return F.pad(tensor, (0, 0, n, 0)) if n else tensor


def left_pad_2d(mask: Any, n: int) -> Any:
    import torch.nn.functional as F

    return F.pad(mask, (n, 0)) if n else mask


class BatchedEngine(Engine):
    """Continuous batching: sequences join and leave the running batch between decode steps."""

    kind = "batched"

    def __init__(self, served: Any, limits: EngineLimits, metrics: Any) -> None:
        from tunebench.evaluate.classify import cache_argument

        super().__init__(served, limits, metrics)
        self.slots = limits.max_batch
        self.batch = RunningBatch()
        self.cache_arg = cache_argument(served.model)
        self.check_cache()

    def _has_work(self) -> bool:
        return bool(self._waiting) or bool(self.batch.seqs)

    def check_cache(self) -> None:
        """The batch cache is built by padding and concatenating per-layer tensors: full attention only."""
        import torch
        from transformers.cache_utils import DynamicLayer

        with torch.inference_mode():
            cache, _ = self._prefill_ids([self.tokenizer.eos_token_id or 0], None)
        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers or []})
            from tunebench.errors import UserError

            raise UserError(f"the batched engine needs full attention in every layer; this model's cache has "
                            f"{kinds or 'no layers'}", "serve it with --engine naive")

    def _iteration(self) -> None:
        self._prune_waiting()
        self._prune_running()
        self._admit()
        if self.batch.seqs:
            self.step()
        self.metrics.running.set(len(self.batch))

    def _prune_running(self) -> None:
        now = time.monotonic()
        keep = []
        for row, seq in enumerate(self.batch.seqs):
            failure = self._drop_reason(seq, now)
            if failure:
                self._fail(seq, failure)
            else:
                keep.append(row)
        self.batch.keep(keep)

    def _admit(self) -> None:
        budget = self.limits.prefill_budget
        while self._waiting and len(self.batch) < self.slots:
            seq = self._waiting[0]
            if budget < len(seq.request.prompt_ids) and budget < self.limits.prefill_budget:
                break  # this iteration's prefill is spent; the running batch decodes first
            self._waiting.popleft()
            budget -= len(seq.request.prompt_ids)
            self._admitted(seq)
            try:
                self._prefill(seq)
            except Exception as err:  # this request alone fails; the running batch is untouched
                log.exception("prefill failed")
                self._fail(seq, GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))

    def _prefill_ids(self, prompt_ids: list[int], seq: Sequence | None) -> tuple[Any, Any]:
        """Run one prompt alone (no padding, so its numbers match the naive engine); return (cache, last logits)."""
        import torch

        ids = torch.tensor([prompt_ids], device=self.device)
        extra = self._adapter_kwargs([seq]) if seq is not None else (
            {"adapter_names": [BASE]} if self.mixed_adapters else {})
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                         position_ids=torch.arange(len(prompt_ids), device=self.device)[None],
                         logits_to_keep=1, **extra)
        cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        return cache, out.logits[:, -1]

    def _prefill(self, seq: Sequence) -> None:
        cache, logits = self._prefill_ids(seq.request.prompt_ids, seq)
        assert seq.row is not None
        tokens, logprobs = choose_tokens(logits, [seq.row])
        self._token(seq, tokens[0], logprobs[0])
        if not seq.done:
            self.batch.add(seq, cache, tokens[0])

    def step(self) -> None:
        """Decode one token for every running sequence, emit them, and let finished sequences leave."""
        import torch

        batch = self.batch
        rows = len(batch)
        self.metrics.observe_step(rows)
        mask = torch.cat([batch.mask, torch.ones((rows, 1), dtype=batch.mask.dtype, device=batch.mask.device)], 1)
        out = self.model(input_ids=batch.next_tokens[:, None], attention_mask=mask,
                         position_ids=batch.positions[:, None], use_cache=True,
                         **{self.cache_arg: batch.cache}, **self._adapter_kwargs(batch.seqs))
        batch.mask = mask
        batch.positions = batch.positions + 1
        tokens, logprobs = choose_tokens(out.logits[:, -1], [s.row for s in batch.seqs])
        batch.next_tokens = torch.tensor(tokens, device=batch.next_tokens.device)
        for seq, token, logprob in zip(batch.seqs, tokens, logprobs, strict=True):
            self._token(seq, token, logprob)
        batch.keep([i for i, seq in enumerate(batch.seqs) if not seq.done])

    def _fail_all(self, failure: GenerationFailed) -> None:
        super()._fail_all(failure)
        for seq in self.batch.seqs:
            self._fail(seq, failure)
        self.batch = RunningBatch()


def create_engine(kind: str, served: Any, limits: EngineLimits, metrics: Any) -> Engine:
    if kind == "naive":
        return NaiveEngine(served, limits, metrics)
    if kind == "batched":
        return BatchedEngine(served, limits, metrics)
    raise ValueError(f"unknown engine {kind!r}; allowed: {', '.join(ENGINES)}")
