"""The two engines behind the server: `naive` (the original baseline) and `batched` (continuous batching).

Both run the model in one background thread that owns it; the HTTP side talks to them through `submit`
(returns a `RequestHandle` to stream from) and `call` (runs a function on the model between decode steps,
for constrained classification). Tokens travel back to the event loop in one `call_soon_threadsafe` per
step, whatever the batch size.

`naive` takes one request at a time through `model.generate`, exactly as the original FastAPI server did.

`batched` keeps a running batch and a queue. Between decode steps it drops finished, cancelled and expired
sequences and admits waiting ones (prefilled together in one left-padded pass, up to a prefill token budget
per iteration, so a burst does not stall the running batch for long); `step()` then decodes one token for
every running sequence in a single forward pass. The KV cache is preallocated (`tunebench.serve.kvcache`):
one slot per sequence, each with its own length, sized to free device memory, so joining and leaving copy
nothing but a leaving row's replacement. Decode steps run over fixed shape buckets and, on CUDA, replay
CUDA graphs (`tunebench.serve.graphs`) with the greedy choice made on the device, which also feeds it to the
next step. So the engine launches step n+1 before it reads step n's tokens and turns them into text and
stream events while the GPU works (vLLM's "async scheduling"); a sequence found finished then has run one
step too many, whose token is dropped. Rows that sample or carry penalties are chosen on the host instead,
after every earlier token was read.
Several LoRA adapters share a batch through peft's mixed-batch `adapter_names` argument (such steps run
eagerly); a batch whose rows all use one adapter, or none, runs in a graph.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sys
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
# Device memory kept free beside the batched engine's KV cache: prefill activations, logits, CUDA graphs' pool.
ACTIVATION_RESERVE_BYTES = 6 * 2**30
PREFILL_GROUP = 16  # waiting requests that trigger a prefill at once, whatever their wait
GIL_SWITCH_S = 0.001
# Rows moved by one copy in compaction: the copy goes through a temporary of every layer's columns of the
# moved rows (32 rows of a 3B model at 256 columns: ~1.3 GB), so a mass leave is copied in groups.
MOVE_GROUP = 32


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
    max_sequence_tokens: int = 0  # prompt + generated tokens one KV-cache slot holds; 0: the model's context
    # While sequences decode, a waiting request is held back up to this long (or until PREFILL_GROUP wait) so
    # prompts are prefilled in groups: each eager prefill pass stalls every running sequence for its duration.
    prefill_delay: float = 0.03


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
        if isinstance(item, Completion | GenerationFailed):
            seq.ended = True
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


class SlotBatch:
    """The running sequences, in rows 0..n-1 of the slot cache (row i holds `seqs[i]`).

    `lengths[i]` counts the tokens of row i in the cache once every launched step has run, which is also the
    position of its next input (kept on the device by the runner). When sequences leave, the last rows move
    into the holes, so the occupied rows stay contiguous and a decode step reads no idle row it does not
    have to.
    """

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.seqs: list[Sequence] = []
        self.lengths: list[int] = []

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: Sequence, length: int) -> None:
        self.seqs.append(seq)
        self.lengths.append(length)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows`; move kept rows from the tail into the holes the others leave."""
        if len(rows) == len(self.seqs):
            return
        size, end = len(rows), len(self.seqs)
        kept = set(rows)
        holes = [i for i in range(size) if i not in kept]
        movers = [i for i in rows if i >= size]
        for at in range(0, len(movers), MOVE_GROUP):
            group = movers[at:at + MOVE_GROUP]
            self.runner.move(group, holes[at:at + MOVE_GROUP], max(self.lengths[i] for i in group))
        for src, dst in zip(movers, holes, strict=True):
            self.seqs[dst], self.lengths[dst] = self.seqs[src], self.lengths[src]
        del self.seqs[size:], self.lengths[size:]
        self.runner.release(size, end)


@dataclass(frozen=True)
class CachedPrefix:
    """A beginning every prompt of an offline run shares (few-shot examples) and its keys and values,
    [layers, kv_heads, P, head_dim] each: a prefill of prompts that start with it copies them into the slots
    and runs only the rest of each prompt (`tunebench.evaluate.generation.SharedPrefix` computes them)."""

    ids: tuple[int, ...]
    keys: Any
    values: Any

    def starts(self, seq: Sequence) -> bool:
        prompt = seq.request.prompt_ids
        return len(prompt) > len(self.ids) and tuple(prompt[:len(self.ids)]) == self.ids


@dataclass
class Pending:
    """One launched forward pass whose tokens the host has not read yet: for `seqs` (its first rows, in order),
    either on the host already (`tokens`, `logprobs`) or being copied into `pairs`, a view of the pinned
    `buffer` (done when `event` is)."""

    seqs: list[Sequence]
    tokens: list[int] | None = None
    logprobs: list[float] | None = None
    buffer: Any = None
    pairs: Any = None
    event: Any = None


class StepProfile:
    """Where the model thread's time goes, logged every `every` seconds while there is traffic. Launches are
    asynchronous, so the GPU's own time shows up only as waiting for it: what the host could not overlap."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.started = time.monotonic()
        self.reset()

    def reset(self) -> None:
        self.steps = self.rows = self.prefills = self.prefilled = 0
        self.gpu_wait_s = self.launch_s = self.host_s = self.prefill_s = self.sampling_s = self.iteration_s = 0.0
        self.window = time.monotonic()

    @property
    def scheduling_s(self) -> float:
        """Iteration time outside the measured parts: admission, pruning, compaction, Python."""
        return max(0.0, self.iteration_s - self.gpu_wait_s - self.launch_s - self.host_s - self.prefill_s)

    def report(self) -> str | None:
        now = time.monotonic()
        if now - self.window < self.every or not (self.steps or self.prefills):
            return None
        wall = now - self.window
        steps = max(self.steps, 1)
        per_step = {name: f"{1e3 * seconds / steps:.2f} ms" for name, seconds in (
            ("waiting for the GPU", self.gpu_wait_s), ("launch", self.launch_s), ("sampling", self.sampling_s),
            ("tokens/streaming", self.host_s), ("scheduling", self.scheduling_s))}
        line = (f"profile: {self.steps / wall:.0f} steps/s, {self.rows / steps:.1f} rows/step, "
                f"{self.rows / wall:.0f} tok/s; per step: " + ", ".join(f"{k} {v}" for k, v in per_step.items()) +
                f"; prefill {self.prefills} launches ({self.prefilled} prompts) "
                f"{1e3 * self.prefill_s / max(self.prefills, 1):.1f} ms each; "
                f"busy {100 * self.iteration_s / wall:.0f}% of {wall:.1f} s")
        self.reset()
        return line


class BatchedEngine(Engine):
    """Continuous batching over a slot-based static KV cache (see `tunebench.serve.kvcache`).

    Between decode steps, finished, cancelled and expired sequences leave and waiting ones are prefilled
    together in one left-padded forward pass (up to a token budget per iteration) straight into their slots;
    while others decode, waiting requests are held up to `prefill_delay` so prefills come in groups.
    A decode step runs every occupied row at once with per-row positions; on CUDA it replays a CUDA graph
    captured per (batch bucket, width bucket, adapter). The greedy choice happens on the device and feeds the
    next step there, so each iteration launches a step and then reads the previous one's tokens while it runs
    (`_pending` holds the launched passes not read yet). Rows that sample or carry penalties go through
    `choose_tokens` on the step's logits, after every earlier token was read.
    """

    kind = "batched"

    def __init__(self, served: Any, limits: EngineLimits, metrics: Any) -> None:
        import os

        from tunebench.evaluate.generation import cache_argument
        from tunebench.serve.graphs import DecodeRunner
        from tunebench.serve.kvcache import SlotCache, bytes_per_slot, kv_geometry, slots_that_fit

        super().__init__(served, limits, metrics)
        self.cache_arg = cache_argument(served.model)
        layers, heads, head_dim, dtype = kv_geometry(self.check_cache())
        longest = min(served.context_length, limits.max_sequence_tokens or served.context_length)
        max_len = longest + 1  # + the scratch column
        per_slot = bytes_per_slot(layers, heads, head_dim, max_len, dtype)
        self.slots = slots_that_fit(limits.max_batch, per_slot, self.device, ACTIVATION_RESERVE_BYTES)
        if self.slots < limits.max_batch:
            log.warning("KV cache: %d slots of %d tokens fit in free device memory (asked for %d)", self.slots,
                        longest, limits.max_batch)
        self.cache = SlotCache(layers, self.slots, max_len, heads, head_dim, dtype, self.device)
        use_graphs = self.device.type == "cuda" and os.environ.get("TUNEBENCH_CUDA_GRAPHS", "1") != "0"
        self.runner = DecodeRunner(self.model, self.cache, self.cache_arg, use_graphs)
        self.batch = SlotBatch(self.runner)
        self._pending: deque[Pending] = deque()
        self.profile = StepProfile()
        self.prefix: CachedPrefix | None = None  # set by offline runs whose prompts share a beginning
        log.info("batched engine: %d slots x %d tokens (%.1f GiB KV cache), CUDA graphs %s", self.slots, longest,
                 self.slots * per_slot / 2**30, "on" if use_graphs else "off")

    def _has_work(self) -> bool:
        return bool(self._waiting) or bool(self.batch.seqs) or bool(self._pending)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        # The event loop and this engine's thread share the GIL; by default a thread that wants it waits up to
        # 5 ms while the other runs Python (an eager prefill is ~20 ms of it), which shows in every stream.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))
        super().start(loop)

    def check_cache(self) -> Any:
        """Every layer must be full attention (one position per column); return a one-token probe cache."""
        import torch

        from tunebench.evaluate.generation import full_attention, returned_cache

        with torch.inference_mode():
            ids = torch.tensor([[self.tokenizer.eos_token_id or 0]], device=self.device)
            extra = {"adapter_names": [BASE]} if self.mixed_adapters else {}
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1, **extra)
        cache = returned_cache(out)
        if not full_attention(cache):
            kinds = sorted({type(layer).__name__ for layer in getattr(cache, "layers", None) or []})
            from tunebench.errors import UserError

            raise UserError(f"the batched engine needs full attention in every layer; this model's cache has "
                            f"{kinds or 'no layers'}", "serve it with --engine naive")
        return cache

    def _iteration(self) -> None:
        started = time.perf_counter()
        self._prune_waiting()
        self._prune_running()
        self._admit()
        if self._pending and any(self._chosen_on_host(s) for s in self.batch.seqs):
            self._read_pending()  # penalties and seeded draws need every earlier token
        launched = self.step() if self.batch.seqs else None
        # Read what ran before; a step whose tokens are still being copied runs on while the host works.
        self._read_pending(keep=launched if launched is not None and launched.buffer is not None else None)
        self.metrics.running.set(len(self.batch))
        self.profile.iteration_s += time.perf_counter() - started
        line = self.profile.report()
        if line:
            log.info(line)

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

    def _prefill_due(self) -> bool:
        if not self._waiting or len(self.batch) >= self.slots:
            return False
        if not self.batch.seqs or len(self._waiting) >= PREFILL_GROUP:
            return True
        return time.monotonic() - self._waiting[0].arrival >= self.limits.prefill_delay

    def _admit(self) -> None:
        """Take waiting requests into free slots while the padded prefill fits the token budget (at least one)."""
        if not self._prefill_due():
            return
        chosen: list[Sequence] = []
        longest = 0
        while self._waiting and len(self.batch) + len(chosen) < self.slots:
            seq = self._waiting[0]
            width = max(longest, len(seq.request.prompt_ids))
            if chosen and width * (len(chosen) + 1) > self.limits.prefill_budget:
                break  # this iteration's prefill is spent; the running batch decodes first
            self._waiting.popleft()
            if len(seq.request.prompt_ids) + seq.params.max_new_tokens > self.cache.usable + 1:
                self._fail(seq, GenerationFailed("internal", f"the request needs more than the {self.cache.usable} "
                                                 "tokens a KV-cache slot holds"))
                continue
            longest = width
            self._admitted(seq)
            chosen.append(seq)
        if not chosen:
            return
        try:
            self._prefill(chosen)
        except Exception as err:  # these requests fail; the running batch is untouched
            log.exception("prefill failed")
            for seq in chosen:
                self._fail(seq, GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Prefill `seqs` together (left-padded) into the slots after the running rows; they start decoding
        from their first tokens, which the host reads later, like a step's."""
        import torch

        started = time.perf_counter()
        first, count = len(self.batch), len(seqs)
        prefix = self.prefix if self.prefix is not None and all(self.prefix.starts(s) for s in seqs) else None
        skip = len(prefix.ids) if prefix is not None else 0  # prompt tokens whose keys and values are copied
        rows, width = self.runner.prefill_shape(count, max(len(s.request.prompt_ids) for s in seqs) - skip)
        ids, positions, columns = [], [], []
        for seq in seqs:
            prompt = seq.request.prompt_ids
            pad = width - (len(prompt) - skip)
            ids.append([0] * pad + list(prompt[skip:]))
            positions.append([0] * pad + list(range(skip, len(prompt))))
            columns.append([self.cache.scratch] * pad + list(range(skip, len(prompt))))
        idle = rows - count  # shape-filling rows: they write the scratch column of slot 0 and are ignored
        host = torch.tensor([ids + [[0] * width] * idle, positions + [[0] * width] * idle,
                             columns + [[self.cache.scratch] * width] * idle], dtype=torch.long)
        adapter, extra = self._adapter_choice(seqs, rows)
        if prefix is not None:
            slots = torch.arange(first, first + count).to(self.device, non_blocking=True)
            self.cache.write_prefix(slots, prefix.keys, prefix.values)
        out = self.runner.prefill(host, list(range(first, first + count)) + [0] * idle, adapter, extra, skip)
        lengths = [len(s.request.prompt_ids) for s in seqs]
        pending = self._chosen(out, seqs)
        self.runner.start_rows(first, lengths, out.chosen[0] if pending.tokens is None else pending.tokens)
        for seq, length in zip(seqs, lengths, strict=True):
            self.batch.add(seq, length)
        self._pending.append(pending)
        self.profile.prefills += 1
        self.profile.prefilled += count
        self.profile.prefill_s += time.perf_counter() - started

    def _adapter_choice(self, seqs: list[Sequence], rows: int) -> tuple[str | None, dict[str, Any]]:
        """The one adapter all `seqs` use (graph path), or peft's mixed-batch argument (eager path)."""
        if not self.mixed_adapters:
            return None, {}
        names = [s.request.adapter or BASE for s in seqs]
        if len(set(names)) == 1 and self.runner.use_graphs:
            return names[0], {}
        return None, {"adapter_names": names + [BASE] * (rows - len(names))}

    @staticmethod
    def _chosen_on_host(seq: Sequence) -> bool:
        return seq.params.do_sample or seq.params.penalized

    def _chosen(self, out: Any, seqs: list[Sequence]) -> Pending:
        """The tokens a forward pass chose for `seqs`: greedy ones are copied to the host in the background;
        rows that sample or carry penalties are chosen here from the logits (a host sync)."""
        seqs = list(seqs)  # the rows as launched; the batch changes before the tokens are read
        if not any(self._chosen_on_host(s) for s in seqs):
            if not self.runner.host_buffers:
                self._read_pending(leave=False)  # every pinned buffer is in use: catch up (rows stay put)
            buffer, pairs, event = self.runner.copy_to_host(out)
            return Pending(seqs, buffer=buffer, pairs=pairs, event=event)
        sampled = time.perf_counter()
        tokens, logprobs = choose_tokens(out.logits[:len(seqs)], [s.row for s in seqs])
        self.profile.sampling_s += time.perf_counter() - sampled
        return Pending(seqs, tokens, logprobs)

    def step(self) -> Pending:
        """Launch one decode step for every running sequence; its tokens become the rows' next inputs on the
        device. Returns the step's pending tokens (read by `_read_pending`)."""
        batch, runner = self.batch, self.runner
        count = len(batch)
        self.metrics.observe_step(count)
        started = time.perf_counter()
        longest = max(batch.lengths) + 1
        rows, width = ((runner.batch_bucket(count), runner.width_bucket(longest)) if runner.bucketed
                       else (count, longest))
        adapter, extra = self._adapter_choice(batch.seqs, rows)
        out = runner.step(rows, width, adapter, extra)
        pending = self._chosen(out, batch.seqs)
        runner.advance(count, out, pending.tokens)
        for i in range(count):
            batch.lengths[i] += 1
        self._pending.append(pending)
        self.profile.steps += 1
        self.profile.rows += count
        self.profile.launch_s += time.perf_counter() - started
        return pending

    def _read_pending(self, keep: Pending | None = None, leave: bool = True) -> None:
        """Read every launched pass's tokens (but `keep`'s, still running), in launch order: stream them,
        finish sequences, and (`leave`) let finished ones leave the batch. A sequence that ended meanwhile
        drops its token."""
        profile = self.profile
        while self._pending and self._pending[0] is not keep:
            pending = self._pending.popleft()
            tokens, logprobs = pending.tokens, pending.logprobs
            if pending.buffer is not None:
                waited = time.perf_counter()
                if pending.event is not None:
                    pending.event.synchronize()  # without the GIL: the event loop streams meanwhile
                profile.gpu_wait_s += time.perf_counter() - waited
                tokens, logprobs = pending.pairs[:, :len(pending.seqs)].tolist()
                self.runner.host_buffers.append(pending.buffer)
            handled = time.perf_counter()
            for seq, token, logprob in zip(pending.seqs, tokens, logprobs, strict=True):
                if not seq.ended:
                    self._token(seq, int(token), logprob)
            profile.host_s += time.perf_counter() - handled
        if leave:
            self.batch.keep([i for i, seq in enumerate(self.batch.seqs) if not seq.ended])

    def _fail_all(self, failure: GenerationFailed) -> None:
        super()._fail_all(failure)
        for seq in self.batch.seqs:
            self._fail(seq, failure)
        for pending in self._pending:
            if pending.buffer is not None:
                self.runner.host_buffers.append(pending.buffer)
        self._pending.clear()
        self.batch = SlotBatch(self.runner)
        try:  # the rows' device inputs back to idle; after a device error this may fail too
            self.runner.release(0, self.cache.slots)
        except Exception:  # the failures above must still reach their clients (the caller flushes them)
            log.exception("could not reset the decode rows")


def create_engine(kind: str, served: Any, limits: EngineLimits, metrics: Any) -> Engine:
    if kind == "naive":
        return NaiveEngine(served, limits, metrics)
    if kind == "batched":
        return BatchedEngine(served, limits, metrics)
    raise ValueError(f"unknown engine {kind!r}; allowed: {', '.join(ENGINES)}")
