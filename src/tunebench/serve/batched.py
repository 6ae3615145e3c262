"""The `batched` engine: continuous batching over the slot KV cache (the scheduler; the model runner is
`tunebench.serve.graphs`, the cache `tunebench.serve.kvcache`, the bookkeeping `tunebench.serve.batch_state`).
See `tunebench.serve.engine` for the overview."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections import deque
from typing import Any

from tunebench.serve import graphs
from tunebench.serve.batch_state import CachedPrefix, Pending, SlotBatch, StepProfile
from tunebench.serve.engine_base import BASE, Engine
from tunebench.serve.requests import EngineLimits, GenerationFailed, Sequence
from tunebench.serve.sampling import choose_tokens

log = logging.getLogger("tunebench.serve")

# Device memory kept free beside the batched engine's KV cache: prefill activations, logits, CUDA graphs' pool.
ACTIVATION_RESERVE_BYTES = 6 * 2**30
# Waiting requests that trigger a prefill at once, whatever their wait. A prefill graph costs ~5 ms of GPU per
# launch plus ~1.3 ms per row (H200, 3B, 104 columns: 14.8 ms at 8 rows, 24.9 at 16, 43.4 at 32, 88.5 at 64),
# so at 300 prompts/s groups of 8 spend ~190 ms of every second on launches where groups of 32 spend ~50.
PREFILL_GROUP = 32
# The waiting queue is checked for cancelled and expired requests this often (and each one again as it is
# admitted): under overload it holds thousands, and walking it every step cost milliseconds of every step.
WAITING_PRUNE_S = 0.05
GIL_SWITCH_S = 0.001


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
        from tunebench.serve.kvcache import SlotCache, bytes_per_slot, kv_cache_dtype, kv_geometry, slots_that_fit
        from tunebench.serve.weights import apply_setting

        super().__init__(served, limits, metrics)
        # TUNEBENCH_WEIGHT_DTYPE=fp8: FP8 projections, before the cache is sized so the freed bytes become slots.
        self.weight_dtype = apply_setting(self.model, self.device)
        self.cache_arg = cache_argument(served.model)
        layers, heads, head_dim, dtype = kv_geometry(self.check_cache())
        storage = kv_cache_dtype(dtype)  # TUNEBENCH_KV_CACHE_DTYPE: the model's dtype, or FP8 (half the bytes)
        longest = min(served.context_length, limits.max_sequence_tokens or served.context_length)
        max_len = longest + 1  # + the scratch column
        per_slot = bytes_per_slot(layers, heads, head_dim, max_len, storage)
        self.slots = slots_that_fit(limits.max_batch, per_slot, self.device, ACTIVATION_RESERVE_BYTES)
        if self.slots < limits.max_batch:
            log.warning("KV cache: %d slots of %d tokens fit in free device memory (asked for %d)", self.slots,
                        longest, limits.max_batch)
        self.cache = SlotCache(layers, self.slots, max_len, heads, head_dim, dtype, self.device, storage)
        use_graphs = self.device.type == "cuda" and os.environ.get("TUNEBENCH_CUDA_GRAPHS", "1") != "0"
        self.runner = DecodeRunner(self.model, self.cache, self.cache_arg, use_graphs)
        self.batch = SlotBatch(self.runner)
        self._pending: deque[Pending] = deque()
        self.profile = StepProfile()
        self.prefix: CachedPrefix | None = None  # set by offline runs whose prompts share a beginning
        self._waiting_pruned = 0.0
        log.info("batched engine: %d slots x %d tokens (%.1f GiB KV cache in %s), CUDA graphs %s", self.slots,
                 longest, self.slots * per_slot / 2**30, str(storage).removeprefix("torch."),
                 "on" if use_graphs else "off")

    def warm_up(self) -> None:
        """Before the server reports ready (served engines on CUDA): compile the decode step and capture the
        graph of every batch bucket, and run three prefill shapes, as vLLM captures its graph sizes at start-up.
        Otherwise the first burst pays for them: on the H200 (3B, 512 slots) the first 512-request burst ran at
        5.0k tok/s served against 14.6k offline, its steps waiting on captures (2026-12-03). Decode graphs with
        a row-length kernel (Triton or FlexAttention) do not depend on the width, so one per bucket covers every
        length; prefill graphs do (a graph per rows x width), so only three shapes run here, which is what
        compiling the layers for dynamic shapes needs when prefills are compiled; later shapes are captures
        (~0.1-0.3 s each). On the H200 (3B, 512 slots, 2026-12-03) it took 16.1 s, 15.0 of them compiling the
        decode step (which the first requests paid before); with compiled prefills (the default on CUDA since)
        86-110 s, most of it dynamo compiling the attention frame once per layer and shape class, and 31.8 s
        once one compiled frame served every layer (`compiled.DecodeCompiler._tensor_indices`, lead-20).
        TUNEBENCH_WARMUP=0 skips it (start-up in seconds, the first requests slower)."""
        import os

        import torch

        runner = self.runner
        if not (runner.use_graphs and runner.flex) or os.environ.get("TUNEBENCH_WARMUP", "1") == "0":
            return
        started = time.perf_counter()
        # Every loaded adapter gets its graphs (and, compiled, its code: peft's branch differs per adapter), the
        # default one first: warming only the default left another adapter's first requests compiling its
        # decode step (22.3 s) and capturing graphs inside a burst (H200, 3B, 2026-12-03 lead-15).
        adapters = ([None] if not self.mixed_adapters else
                    list(dict.fromkeys([self.served.default_adapter or BASE, BASE, *self.served.adapters])))
        buckets = sorted({runner.batch_bucket(n) for n in range(1, self.slots + 1)})
        with torch.inference_mode():
            for adapter in adapters:
                # Compiled prefills: three shapes make rows and width dynamic, so later shapes only capture (a
                # lone prompt runs as 2 rows, `graphs.DecodeRunner.prefill_shape`). Eager prefills: captures.
                for count, longest in ((1, 64), (graphs.PREFILL_ROW_STEP, 64), (2 * graphs.PREFILL_ROW_STEP, 96)):
                    rows, width = runner.prefill_shape(min(count, self.slots), min(longest, self.cache.usable))
                    if rows > self.slots:
                        continue
                    pad = [[0] * width] * rows  # every column is padding: it writes slot 0's scratch column
                    host = torch.tensor([pad, pad, [[self.cache.scratch] * width] * rows], dtype=torch.long)
                    runner.prefill(host, [0] * rows, adapter, {})
                for rows in buckets:  # idle rows feed token 0 at position 0 into the scratch column
                    runner.step(rows, graphs.MIN_WIDTH, adapter, {})
                runner.release(0, self.slots)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
        log.info("warm-up: %d decode graphs (1 to %d rows) and 3 prefill shapes for %d adapter(s) in %.1f s",
                 len(buckets), buckets[-1], len(adapters), time.perf_counter() - started)

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
        p = self.profile
        marks = (p.gpu_wait_s, p.launch_s, p.prefill_s, p.host_s, p.sampling_s)
        if started - self._waiting_pruned >= WAITING_PRUNE_S:
            self._prune_waiting()
            self._waiting_pruned = started
        self._prune_running()
        self._admit()
        if self._pending and any(self._chosen_on_host(s) for s in self.batch.seqs):
            self._read_pending()  # penalties and seeded draws need every earlier token
        launched = self.step() if self.batch.seqs else None
        # Read what ran before; a step whose tokens are still being copied runs on while the host works.
        self._read_pending(keep=launched if launched is not None and launched.buffer is not None else None)
        self.metrics.running.set(len(self.batch))
        elapsed = time.perf_counter() - started
        p.iteration_s += elapsed
        self.metrics.engine_time(elapsed, p.gpu_wait_s - marks[0], p.launch_s - marks[1], p.prefill_s - marks[2],
                                 p.host_s - marks[3], p.sampling_s - marks[4])
        line = p.report()
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
        """Prefill waiting requests into free slots: one group when a prefill is due, then more groups before the
        running rows decode again while the waiting outnumber the running by `limits.waiting_served_ratio`
        (TGI's knob of that name: the running streams pause for the extra prefills). A burst then decodes in
        one batch that starts and ends together, instead of groups that each join a step later and leave a
        step later, every such step paying the whole batch's fixed cost (weights, launches) for fewer rows."""
        if not self._prefill_due():
            return
        ratio = self.limits.waiting_served_ratio
        while self._admit_group() and self._waiting and len(self.batch) < self.slots:
            if len(self._waiting) < ratio * len(self.batch):
                break

    def _admit_group(self) -> bool:
        """Take waiting requests into free slots while the padded prefill fits the token budget (at least one)
        and prefill them; whether a prefill ran."""
        chosen: list[Sequence] = []
        cap = self._group_size()
        now = time.monotonic()
        while self._waiting and len(chosen) < cap:
            seq = self._waiting.popleft()
            failure = self._drop_reason(seq, now)  # cancelled or expired since the queue was last pruned
            if failure:
                self._fail(seq, failure)
                continue
            if len(seq.request.prompt_ids) + seq.params.max_new_tokens > self.cache.usable + 1:
                self._fail(seq, GenerationFailed("internal", f"the request needs more than the {self.cache.usable} "
                                                 "tokens a KV-cache slot holds"))
                continue
            self._admitted(seq)
            chosen.append(seq)
        if not chosen:
            return False
        try:
            self._prefill(chosen)
        except Exception as err:  # these requests fail; the running batch is untouched
            log.exception("prefill failed")
            for seq in chosen:
                self._fail(seq, GenerationFailed("internal", f"generation failed: {type(err).__name__}: {err}"))
            return False
        return True

    def _group_size(self) -> int:
        """How many waiting prompts the next prefill takes: as many as free slots and the padded token budget
        allow (at least one), at most PREFILL_ROWS with shape buckets (a graph's). The group is not cut to its
        row bucket (`graphs.prefill_shape`: powers of two up to PREFILL_ROW_STEP rows, then its multiples):
        37 prompts run as 40 rows, 3 of them padding (~4 ms on the H200), where 32 now and 5 next iteration
        would pay a second launch (~5 ms) and delay 5 prompts. (Row buckets in powers of two, as before,
        padded 33 prompts to 64 rows; cutting to them ran many small prefills.)"""
        count, longest = 0, 0
        for seq in itertools.islice(self._waiting, self.slots - len(self.batch)):
            longest = max(longest, len(seq.request.prompt_ids))
            if count and longest * (count + 1) > self.limits.prefill_budget:
                break  # this iteration's prefill is spent; the running batch decodes first
            count += 1
        return min(count, graphs.PREFILL_ROWS) if self.runner.bucketed else count

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
        self.metrics.prefill_size.observe(count)
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
