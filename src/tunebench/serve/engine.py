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

The code: request types in `tunebench.serve.requests`, the shared model thread in `engine_base`, the engines in
`naive` and `batched` (its bookkeeping in `batch_state`, its model runner in `graphs`, its KV cache in `kvcache`),
the batched engine run offline in `offline`. This module is their one entry point.
"""

from __future__ import annotations

from typing import Any

from tunebench.serve.batch_state import CachedPrefix, Pending, SlotBatch, StepProfile
from tunebench.serve.batched import BatchedEngine
from tunebench.serve.engine_base import BASE, Engine
from tunebench.serve.naive import NaiveEngine
from tunebench.serve.requests import (
    Completion,
    EngineLimits,
    FinishReason,
    GenerationFailed,
    GenerationRequest,
    Overloaded,
    RequestHandle,
    Sequence,
    TokenEvent,
)

ENGINES = ("batched", "naive")
__all__ = ["BASE", "ENGINES", "BatchedEngine", "CachedPrefix", "Completion", "Engine", "EngineLimits", "FinishReason",
           "GenerationFailed", "GenerationRequest", "NaiveEngine", "Overloaded", "Pending", "RequestHandle",
           "Sequence", "SlotBatch", "StepProfile", "TokenEvent", "create_engine"]


def create_engine(kind: str, served: Any, limits: EngineLimits, metrics: Any) -> Engine:
    if kind == "naive":
        return NaiveEngine(served, limits, metrics)
    if kind == "batched":
        engine = BatchedEngine(served, limits, metrics)
        engine.warm_up()  # served engines only: offline runs (evaluation) build BatchedEngine themselves
        return engine
    raise ValueError(f"unknown engine {kind!r}; allowed: {', '.join(ENGINES)}")
