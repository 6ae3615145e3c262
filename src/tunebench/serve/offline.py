"""The batched engine run offline: token-id prompts in, completions out, in the caller's thread.

No HTTP, no event loop, no engine thread: every request is queued at once and the caller's thread runs the
engine's iterations (admission, prefill, decode steps, reading tokens) until all are done, so nothing else
competes for the interpreter. Evaluation generates through it (`eval.engine: batched`), and the benchmarks
compare it with the same engine behind HTTP, which is how much the front end costs.

Prompts that all share a long beginning (few-shot examples) can start from that beginning's keys and values
(`CachedPrefix`): each prefill copies them into its slots and runs only the rest of each prompt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from tunebench.serve.batch_state import CachedPrefix
from tunebench.serve.batched import BatchedEngine
from tunebench.serve.engine_base import heap_frozen
from tunebench.serve.requests import Completion, EngineLimits, GenerationFailed, GenerationRequest
from tunebench.serve.requests import Sequence as EngineSequence

# Rows decoded together at most (fewer when the KV cache does not fit in free memory). On the H200 a burst of
# 512 prompts of 100 tokens, 64 new each, ran at 16.8k tok/s with 512 slots and 15.3k with 256
# (benchmarks/decode_kernels.py, benchmarks/results/2026-12-03-h200-lead-2-*).
OFFLINE_SLOTS = 512
OFFLINE_PREFILL_BUDGET = 8192  # prompt tokens per prefill: offline, no running request waits on a stall


class _Handle:
    """What a Sequence needs of its request handle offline: nobody cancels."""

    cancelled = False


def offline_engine(model: Any, tokenizer: Any, *, longest: int, slots: int = OFFLINE_SLOTS,
                   prefill_budget: int = OFFLINE_PREFILL_BUDGET) -> BatchedEngine:
    """A batched engine over `model` whose KV-cache slots hold `longest` tokens (prompt + generated)."""
    from tunebench.serve.loading import ServedModel
    from tunebench.serve.metrics import ServeMetrics

    served = ServedModel(model=model, tokenizer=tokenizer, model_id="offline", context_length=longest,
                         dtype=str(getattr(model, "dtype", "")), device=str(model.device))
    # No request arrives later, so none is held back for a larger prefill group (prefill_delay), and no
    # stream waits on a prefill: every free slot is filled before decoding resumes (waiting_served_ratio 0),
    # so prompts admitted together decode together instead of joining one step after another.
    limits = EngineLimits(max_batch=slots, max_queue=0, request_timeout=math.inf, prefill_budget=prefill_budget,
                          max_sequence_tokens=longest, prefill_delay=0.0, waiting_served_ratio=0.0)
    engine = BatchedEngine(served, limits, ServeMetrics("batched"))
    engine.runner.offline = True  # coarse buckets, eager prefills
    engine.profile.every = math.inf  # one breakdown for the whole run, read by the caller
    return engine


def cached_prefix(ids: Sequence[int], dynamic_cache: Any) -> CachedPrefix:
    """A CachedPrefix from the DynamicCache of a forward pass over `ids` alone (batch of one)."""
    import torch

    layers = dynamic_cache.layers
    return CachedPrefix(tuple(ids), torch.stack([layer.keys[0] for layer in layers]),
                        torch.stack([layer.values[0] for layer in layers]))


def run_offline(engine: BatchedEngine, requests: Sequence[GenerationRequest], *,
                prefix: CachedPrefix | None = None,
                on_finished: Callable[[int], None] | None = None) -> list[Completion]:
    """Every request through `engine`, in order of the results; `on_finished(n)` after each iteration that
    finished n of them. Requests are queued longest prompt first, so a prefill group pads little. A failed
    request raises (offline, nobody else would hear of it)."""
    import torch

    if not requests:
        return []
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prompt_ids))
    index: dict[int, int] = {}
    for i in order:
        seq = EngineSequence(requests[i], _Handle(), engine)  # type: ignore[arg-type]
        index[id(seq.handle)] = i
        engine._waiting.append(seq)
    results: list[Completion | None] = [None] * len(requests)
    engine.prefix = prefix
    engine.profile.reset()
    try:
        # The heap as it is (the model, compiled code) stays out of collections during the run (`heap_frozen`).
        with torch.inference_mode(), heap_frozen():
            while engine._has_work():
                engine._iteration()
                items, engine._outbox = engine._outbox, []
                done = 0
                for handle, item in items:
                    if isinstance(item, GenerationFailed):
                        raise RuntimeError(f"offline generation failed ({item.kind}): {item.message}")
                    if isinstance(item, Completion):
                        results[index[id(handle)]] = item
                        done += 1
                if done and on_finished:
                    on_finished(done)
    finally:
        engine.prefix = None
    missing = sum(r is None for r in results)
    if missing:
        raise RuntimeError(f"the engine ended {missing} of {len(requests)} requests without a result")
    return [r for r in results if r is not None]
