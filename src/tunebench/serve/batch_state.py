"""The batched engine's bookkeeping: which sequence runs in which slot row (and compaction when rows
leave), launched passes whose tokens are not read yet, a shared prefix's cached keys and values, and where
the model thread's time goes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tunebench.serve.requests import Sequence


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
        if movers:
            self.runner.move(movers, holes, [self.lengths[i] for i in movers])
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
