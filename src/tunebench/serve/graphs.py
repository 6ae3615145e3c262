"""One decode step over the slot cache: CUDA graphs per shape bucket on CUDA, the same code eagerly elsewhere.

The step reads three static per-row buffers (the token to feed, its position, the column it writes to), runs
the model for rows 0..b-1 with attention over columns 0..w-1, and leaves the last position's logits plus,
computed on the device, each row's greedy token and its log-probability. The buffers live on the device and
a step advances them there (`advance`), so the engine can launch step n+1 before it has read step n's
tokens: the host's work on those tokens (text, stop checks, streaming) overlaps the GPU's next step.
Shapes come from buckets: b is a power of two up to 32, then a multiple of 32 (or all slots), covering the
occupied rows; w a power of two (or a multiple of 64 between 128 and 512) covering the longest sequence, so a
few dozen graphs serve every batch; rows past the occupied ones are idle (they write the scratch column and
see column 0 only). With FlexAttention decode (`tunebench.serve.decode_attention`, the default on CUDA)
the width drops out: each row reads its own blocks of its slot, so decode graphs are keyed by b alone.

Prefills of waiting prompts are graphs too (an eager forward of a 3B model costs ~40 ms of Python on the
H200 host, whatever the batch, which stalled the running batch at every admission): the prompts are
left-padded to a width bucket, the group to a power-of-two row bucket (up to PREFILL_ROWS x PREFILL_WIDTH;
larger prefills run eagerly), and attention reads the group's slots through an index gather, since a graph
cannot bake in where the rows start.

A graph bakes in which LoRA adapter is active when it is captured, so it is keyed by the adapter too; a batch
whose rows use different adapters (peft's mixed-batch `adapter_names`) runs eagerly instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tunebench.errors import SettingError

log = logging.getLogger("tunebench.serve")
MIN_WIDTH = 32
WIDTH_STEP = 64
FINE_WIDTHS = (128, 512)
WARMUP_RUNS = 1  # eager runs on a side stream before capture (cuBLAS workspace, lazy allocations, kernel plans)
BASE = "__base__"
ROW_STEP = 32
PREFILL_ROWS = 64  # largest prefill group a graph serves
PREFILL_WIDTH = 1024  # longest padded prompt a graph serves
# Prefill widths are multiples of this (below the width bucket): a prefill's cost is its rows x width, and a
# 100-token prompt padded to 128 columns pays 28% for padding (0: the width bucket, as decode uses).
# H200, 3B, 100-token prompts, 64 rows: 1.68 ms of GPU per prompt at 128 columns, 1.51 at 112, 1.38 at 104.
PREFILL_WIDTH_STEP = int(os.environ.get("TUNEBENCH_PREFILL_WIDTH_STEP", "8"))
PREFILL_ROW_STEP = 8  # prefill rows: powers of two up to this, then its multiples (cost is linear in rows)
HOST_BUFFERS = 8  # pinned buffers the steps' choices are copied into (a few steps are in flight at most)


def power_of_two_at_least(n: int, floor: int = 1) -> int:
    size = floor
    while size < n:
        size *= 2
    return size


def prefill_compile(device_type: str) -> bool:
    """TUNEBENCH_PREFILL_COMPILE=0|1, or the default: on CUDA. Unmerged adapters included: before the warm-up
    covered every loaded adapter and one compiled frame served every layer, another adapter's first prefill
    compiled inside a request (H200, 3B: 31.6 s), so their prefills stayed eager; now compiled, the unmerged
    burst went from 16.8k to 19.0k tok/s against 21.7k merged (H200 lead-21, benchmarks/burst_timeline.py),
    and the warm-up from 18.2 to 22.5 s. Mixed-adapter prefills (`adapter_names`) stay eager either way."""
    raw = os.environ.get("TUNEBENCH_PREFILL_COMPILE", "").strip()
    if raw not in ("", "0", "1"):
        raise SettingError(f"TUNEBENCH_PREFILL_COMPILE={raw!r}; allowed: 0, 1")
    return raw == "1" if raw else device_type == "cuda"


class FlexCaptureFailed(RuntimeError):
    """A FlexAttention decode step failed to capture; the runner decodes with SDPA instead."""


@dataclass
class StepOutput:
    logits: Any  # (b, vocab) float32, last position of every row
    chosen: Any  # (2, b) float64: greedy token id, its log-probability


class DecodeRunner:
    def __init__(self, model: Any, cache: Any, cache_arg: str, use_graphs: bool) -> None:
        import torch

        self.model, self.cache, self.cache_arg = model, cache, cache_arg
        device = cache.keys[0].device
        slots = cache.slots
        # Token, position and write column of every row: the running rows' next step, kept on the device (a
        # step advances them there, so the next one can start before the host has seen this one's tokens).
        # Idle rows feed token 0 at position 0 into the scratch column.
        self.inputs = torch.zeros((3, slots), dtype=torch.long, device=device)
        self.inputs[2].fill_(cache.scratch)
        self.rows = torch.arange(slots, device=device)
        self.pinned = device.type == "cuda"
        widest = power_of_two_at_least(max(slots, PREFILL_ROWS))  # the most rows a step or prefill runs
        self.host_buffers = deque(torch.empty(2 * widest, dtype=torch.float64, pin_memory=self.pinned)
                                  for _ in range(HOST_BUFFERS))
        self.prefill_inputs = torch.zeros((3, PREFILL_ROWS, PREFILL_WIDTH), dtype=torch.long, device=device)
        self.prefill_rows = torch.zeros(PREFILL_ROWS, dtype=torch.long, device=device)
        self.use_graphs = use_graphs
        # Shape buckets on CUDA even when eager, so an eager step runs the kernels a graph would replay.
        self.bucketed = device.type == "cuda"
        self.graphs: dict[tuple[str, str | None, int, int], tuple[Any, StepOutput]] = {}
        self.pool = torch.cuda.graph_pool_handle() if use_graphs else None
        attn = getattr(model.config, "_attn_implementation", "sdpa")
        self.additive_dtype = None if attn == "sdpa" else cache.compute_dtype  # the model's, even over FP8
        self.sdpa_backends = sdpa_backends(os.environ.get("TUNEBENCH_SDPA_BACKEND", ""))
        # Decode attention on CUDA reads only each row's own columns, with one graph per row count: the Triton
        # kernel (`tunebench.serve.triton_decode`, the default where Triton imports) or FlexAttention with a
        # per-row block mask; SDPA over the width bucket elsewhere or when TUNEBENCH_DECODE_ATTENTION=sdpa. If
        # the Triton kernel cannot run, FlexAttention serves; if neither can, SDPA.
        self.decode_attention: Any = None
        self.flex_error: str | None = None  # why the row-length kernel was given up for SDPA, if it was
        self._flex_checked = False
        self.flex_first_s = 0.0  # the first such step, eager: torch.compile or Triton builds the kernel there
        default = "sdpa"
        if device.type == "cuda":
            from tunebench.serve.triton_decode import available

            default = "triton" if available() is None else "flex"
        choice = os.environ.get("TUNEBENCH_DECODE_ATTENTION", default)
        if choice not in ("triton", "flex", "sdpa"):
            raise SettingError(f"TUNEBENCH_DECODE_ATTENTION={choice!r}; allowed: triton, flex, sdpa")
        if choice == "triton":  # a bad TUNEBENCH_TRITON_DECODE is refused here, not at the first decode step
            from tunebench.serve.triton_decode import variant

            variant()
        # Steps of fewer rows decode with SDPA (TUNEBENCH_FLEX_MIN_ROWS; 0: the row-length kernel at every size).
        # With FlexAttention the default 2 sends a lone sequence to SDPA: on the H200 SDPA's 1-row step was 3.85
        # vs 4.24 ms, and served single-stream inter-token latency was 3.8 ms with it against 4.2 ms without, at
        # an unchanged sustained rate (195 vs 197 req/s). The Triton kernel has no block mask or query padding
        # to pay for at one row, so it serves every size (default 1).
        self.flex_min_rows = int(os.environ.get("TUNEBENCH_FLEX_MIN_ROWS", "1" if choice == "triton" else "2"))
        for kernel in {"triton": ("triton", "flex"), "flex": ("flex",), "sdpa": ()}[choice]:
            try:
                from tunebench.serve.decode_attention import DecodeAttention

                self.decode_attention = DecodeAttention(model, self.inputs[1], cache.max_len, kernel=kernel)
                break
            except Exception as err:  # no Triton, an older torch or transformers: the next kernel, or SDPA
                self._give_up_flex(err)
        if cache.quantized and getattr(self.decode_attention, "kernel", None) == "flex":
            log.warning("FP8 KV cache with FlexAttention decode: each step dequantizes every slot of every layer "
                        "(correct, not fast); the Triton kernel reads FP8 itself")
        # Offline runs (every request queued at once): coarser buckets, so fewer graphs to capture (see
        # batch_bucket), and prefills run eagerly: an offline run's prefill shapes hardly repeat, so a graph per
        # shape costs a capture (~0.3 s for a 3B model) to save one eager pass's launches (~40 ms).
        self._offline = False
        self.captures = 0
        self.capture_s = 0.0  # host time spent warming up and capturing graphs
        # torch.compile of the decode step (TUNEBENCH_DECODE_COMPILE, `tunebench.serve.compiled`): fused
        # kernels, still captured in this runner's graphs; eager if it fails.
        from tunebench.serve.compiled import DecodeCompiler, compile_mode

        mode = compile_mode(device.type)
        # TUNEBENCH_PREFILL_COMPILE (`prefill_compile`: default 1 on CUDA, else 0):
        # prefill graphs run the compiled layers too. On the H200 (3B, 2026-12-03, benchmarks/prefill_profile.py):
        # 33.9 instead of 44.2 ms for 32 prompts of 100 tokens (475 vs 364 useful TFLOP/s: the rotary embedding,
        # GELU and layer norms fused), and the served rates rose with it: 100/64 at 300 req/s p90 1.63 s,
        # classification 600 req/s p90 1.44 s (eager: 2.01 s and 538/s achieved). (It once cost the 1-row decode
        # step 0.7 ms: the per-layer compiles of the attention frame passed dynamo's recompile limit,
        # `compiled.ENTRIES_PER_LAYER`.) Start-up compiles longer (see `BatchedEngine.warm_up`).
        self.compile_prefill = prefill_compile(device.type)
        try:
            self.compiler = DecodeCompiler(model, cache, mode)
        except Exception as err:  # e.g. no decoder layer list to compile regionally
            self.compiler = DecodeCompiler(model, cache, "off")
            self.compiler.give_up(err)
            self.compiler.mode = mode

    @property
    def offline(self) -> bool:
        return self._offline

    @offline.setter
    def offline(self, value: bool) -> None:
        # Offline runs (evaluation: a few hundred steps) decode eagerly unless TUNEBENCH_DECODE_COMPILE asks:
        # compiling (~7 s per step kind the first time) would cost more than it saves (~1.1-1.5 ms a step).
        from tunebench.serve.compiled import ENV, DecodeCompiler

        self._offline = value
        if value and ENV not in os.environ and self.compiler.mode != "off":
            self.compiler = DecodeCompiler(self.model, self.cache, "off")

    def batch_bucket(self, rows: int) -> int:
        """Powers of two up to ROW_STEP rows, then multiples of ROW_STEP: idle rows still read `width` columns
        of keys and values, and at 145 running rows a power of two would pay for 111 idle ones. Offline
        (`offline`) only the tail of a run has fewer rows than slots, and each capture costs ~0.3 s of a
        3B model, so the tail uses powers of two from ROW_STEP up (a few graphs instead of a dozen)."""
        if self.offline:
            return min(power_of_two_at_least(max(rows, ROW_STEP)), self.cache.slots)
        bucket = power_of_two_at_least(rows) if rows <= ROW_STEP else -(-rows // ROW_STEP) * ROW_STEP
        return min(bucket, self.cache.slots)

    def width_bucket(self, longest: int) -> int:
        """Powers of two, but steps of WIDTH_STEP between 128 and 512 columns: attention reads every column
        of the bucket, and a power of two wastes up to half of them."""
        width = power_of_two_at_least(longest, MIN_WIDTH)
        if FINE_WIDTHS[0] < width <= FINE_WIDTHS[1] and not self.offline:  # offline: fewer graphs to capture
            width = -(-longest // WIDTH_STEP) * WIDTH_STEP
        return min(width, self.cache.usable)

    # ------------------------------------------------------------ the rows' inputs, on the device

    def start_rows(self, first: int, positions: list[int], tokens: Any) -> None:
        """Rows first.. begin decoding: each feeds `tokens` (a device tensor, or host ids) at its position."""
        import torch

        n = len(positions)
        where = torch.tensor(positions, dtype=torch.long).expand(2, n)
        self.inputs[1:, first:first + n].copy_(where, non_blocking=True)
        self.inputs[0, first:first + n].copy_(tokens[:n] if torch.is_tensor(tokens) else torch.tensor(tokens),
                                              non_blocking=True)

    def advance(self, count: int, out: StepOutput, tokens: list[int] | None = None) -> None:
        """After a step over rows 0..count-1: each row feeds its new token (the step's greedy choice, or
        `tokens` chosen on the host) at the next position."""
        import torch

        new = out.chosen[0, :count] if tokens is None else torch.tensor(tokens, dtype=torch.long)
        self.inputs[0, :count].copy_(new, non_blocking=True)
        self.inputs[1:, :count] += 1

    def move(self, src: list[int], dst: list[int], lengths: list[int]) -> None:
        """Sequences move from rows `src` to rows `dst` (compaction): their cache columns (`lengths`, each
        row's own) and their next inputs."""
        import torch

        self.cache.move(src, dst, lengths)
        src_rows, dst_rows = (torch.tensor(rows, dtype=torch.long).to(self.rows.device, non_blocking=True)
                              for rows in (src, dst))
        self.inputs[:, dst_rows] = self.inputs[:, src_rows]

    def release(self, first: int, end: int) -> None:
        """Rows first..end-1 are idle again."""
        self.inputs[:2, first:end] = 0
        self.inputs[2, first:end] = self.cache.scratch

    def copy_to_host(self, out: StepOutput) -> tuple[Any, Any, Any]:
        """Start copying the step's (token, log-probability) pairs, every row of its bucket, to a pinned
        buffer; (buffer, its (2, rows) view holding the pairs, CUDA event that marks the copy done or None off
        CUDA). The buffer goes back to `host_buffers` once read. Source and destination are both contiguous:
        a copy into a strided slice of host memory would wait for the whole stream, the step included."""
        import torch

        buffer = self.host_buffers.popleft()
        rows = out.chosen.shape[1]
        pairs = buffer[:2 * rows].view(2, rows)
        pairs.copy_(out.chosen, non_blocking=True)
        if not self.pinned:
            return buffer, pairs, None
        event = torch.cuda.Event()
        event.record()
        return buffer, pairs, event

    @property
    def flex(self) -> bool:
        """Whether decode steps use FlexAttention (`tunebench.serve.decode_attention`)."""
        return self.decode_attention is not None

    def forward(self, rows: int, width: int, extra: dict[str, Any]) -> StepOutput:
        """The step's body: model forward for rows 0..rows-1, then greedy choice on the device. With
        FlexAttention, `width` is unused: each row reads its own blocks of its slot."""
        tokens, positions, cols = self.inputs[0, :rows, None], self.inputs[1, :rows, None], self.inputs[2, :rows, None]
        flex = self.decode_attention if rows >= self.flex_min_rows else None
        self.cache.bind(self.rows[:rows, None], cols, 0, rows, width, whole=flex is not None)
        # Mixed-adapter steps (`extra`) stay eager: their per-row names would be compiled in.
        run = functools.partial(self.compiler.run, self._run, "decode-flex" if flex else "decode") \
            if not extra else self._run
        if flex is None:
            return run(tokens, positions, width, extra)
        with flex.scope():
            return run(tokens, positions, width, extra, mask=flex.mask(rows))

    def _run(self, tokens: Any, positions: Any, width: int, extra: dict[str, Any], mask: Any = None) -> StepOutput:
        import torch

        from tunebench.serve.kvcache import visible_mask

        if mask is None:
            mask = visible_mask(positions, width, self.additive_dtype)
        with self.attention_scope():
            out = self.model(input_ids=tokens, position_ids=positions, attention_mask=mask, use_cache=True,
                             logits_to_keep=1, **{self.cache_arg: self.cache}, **extra)
        logits = out.logits[:, -1].float()
        greedy = logits.argmax(dim=-1)
        logprob = torch.log_softmax(logits, dim=-1).gather(1, greedy[:, None])[:, 0]
        return StepOutput(logits, torch.stack([greedy.double(), logprob.double()]))

    def attention_scope(self) -> Any:
        """The SDPA kernels attention may use (`sdpa_backends`, from TUNEBENCH_SDPA_BACKEND, e.g.
        "efficient" or "cudnn,efficient"; default: torch's own choice). A graph keeps the kernels it was
        captured with, so this is read at capture (and on every eager pass)."""
        if not self.sdpa_backends:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel(self.sdpa_backends)

    def step(self, rows: int, width: int, adapter: str | None, extra: dict[str, Any]) -> StepOutput:
        """Run one step; `adapter` is the one adapter every row uses (None: no adapters are loaded), and
        `extra` the mixed-batch arguments when the rows disagree (then it runs eagerly)."""
        flex = self.flex and rows >= self.flex_min_rows
        if flex and not self._flex_checked:
            # First FlexAttention step: an eager run compiles the kernel (it writes the keys and values the step
            # writes, so it is harmless); if torch cannot build it here, SDPA serves instead.
            started = time.perf_counter()
            try:
                with adapter_scope(self.model, adapter):
                    self.forward(rows, width, extra)
                self._flex_checked = True
                self.flex_first_s = time.perf_counter() - started
            except Exception as err:
                self._give_up_flex(err)
        if flex and self.flex:
            try:
                return self._replay("decode-flex", self.forward, rows, 0, adapter, extra)
            except FlexCaptureFailed as err:
                self._give_up_flex(err.__cause__ or err)
        return self._replay("decode", self.forward, rows, width, adapter, extra)

    def _give_up_flex(self, err: BaseException) -> None:
        kernel = getattr(self.decode_attention, "kernel", "row-length")
        log.warning("%s decode attention unavailable (%s: %s); falling back", kernel, type(err).__name__, err)
        self.decode_attention = None
        self.flex_error = f"{type(err).__name__}: {err}"[:300]

    # ------------------------------------------------------------ prefill

    def prefill_shape(self, count: int, longest: int) -> tuple[int, int]:
        """(rows, width) a prefill of `count` prompts runs with: buckets on CUDA, exact elsewhere."""
        if not self.bucketed:
            return count, longest
        width = self.width_bucket(longest)
        if PREFILL_WIDTH_STEP > 0 and not self.offline:
            width = min(width, max(MIN_WIDTH, -(-longest // PREFILL_WIDTH_STEP) * PREFILL_WIDTH_STEP))
        step = PREFILL_ROW_STEP
        # Compiled prefills take at least 2 rows (a lone prompt gets an idle row): torch.compile specializes a
        # dimension of size 1, so 1-row prefills would compile code of their own, once per width (28 s of
        # compiling inside the first lone request of a new width on the H200); a second row of ~100 tokens
        # costs a bandwidth-bound prefill next to nothing.
        floor = 2 if self.compile_prefill and self.compiler.active("prefill") else 1
        rows = power_of_two_at_least(count, floor) if count <= step else -(-count // step) * step
        return rows, width

    def prefill(self, host: Any, slot_rows: list[int], adapter: str | None, extra: dict[str, Any],
                offset: int = 0) -> StepOutput:
        """`host`: (3, rows, width) CPU tensor of left-padded tokens, positions and write columns (padding
        writes the scratch column); `slot_rows`: the slot of each row (idle rows: any slot, they write scratch).
        `offset`: columns 0..offset-1 of the rows' slots already hold a shared prefix's keys and values (the
        tokens continue it), so attention reads offset + width columns."""
        import torch

        _, rows, width = host.shape
        slots = torch.tensor(slot_rows, dtype=torch.long)
        if rows > PREFILL_ROWS or width > PREFILL_WIDTH or self.offline:  # too large for the buffers: eagerly
            # non_blocking: a blocking copy waits for every step already queued, so the host would launch this
            # eager prefill (~40 ms of Python for a 3B model) onto an idle GPU instead of behind running steps.
            device = self.rows.device
            inputs, slots = host.to(device, non_blocking=True), slots.to(device, non_blocking=True)
            return self._prefill_pass(inputs[0], inputs[1], inputs[2], slots, offset, width, extra)
        self.prefill_inputs[:, :rows, :width].copy_(host, non_blocking=True)
        self.prefill_rows[:rows].copy_(slots, non_blocking=True)
        forward = functools.partial(self.prefill_forward, offset=offset) if offset else self.prefill_forward
        return self._replay(f"prefill+{offset}" if offset else "prefill", forward, rows, width, adapter, extra)

    def prefill_forward(self, rows: int, width: int, extra: dict[str, Any], offset: int = 0) -> StepOutput:
        tokens, positions, cols = (self.prefill_inputs[i, :rows, :width] for i in range(3))
        return self._prefill_pass(tokens, positions, cols, self.prefill_rows[:rows], offset, width, extra,
                                  compiled=self.compile_prefill)

    def _prefill_pass(self, tokens: Any, positions: Any, cols: Any, slots: Any, offset: int, width: int,
                      extra: dict[str, Any], compiled: bool = False) -> StepOutput:
        """A prefill's forward into `slots`. From column 0 (no shared prefix), attention reads the pass's own
        keys and values (`SlotCache.bind(fresh=True)`, `fresh_mask`): the same keys as the slots' columns,
        without gathering the group's slots out of every layer's cache (1.4 ms of a 32-prompt prefill of the 3B
        on the H200, lead-16), and over an FP8 cache without dequantizing them (77 against 25 ms of host time
        per launch, lead-10); the slots get them quantized. After a shared prefix it reads the gathered slots."""
        from tunebench.serve.kvcache import fresh_mask

        fresh = offset == 0
        self.cache.bind(slots[:, None], cols, 0, slots.shape[0], offset + width, gather=slots, fresh=fresh)
        mask = fresh_mask(cols, self.cache.scratch, self.additive_dtype) if fresh else None
        if compiled and not extra:  # the decode step's compiled layers, for prefill graphs too
            return self.compiler.run(self._run, "prefill", tokens, positions, offset + width, extra, mask=mask)
        return self._run(tokens, positions, offset + width, extra, mask=mask)

    # ------------------------------------------------------------ graphs

    def _replay(self, kind: str, forward: Any, rows: int, width: int, adapter: str | None,
                extra: dict[str, Any]) -> StepOutput:
        if not self.use_graphs or extra:
            return forward(rows, width, extra)
        key = (kind, adapter, rows, width)
        if key not in self.graphs:
            started = time.perf_counter()
            try:
                self.graphs[key] = self.capture(forward, rows, width, adapter)
                self.capture_s += time.perf_counter() - started
            except RuntimeError as err:  # e.g. a host sync inside the forward: serve eagerly rather than not at all
                step = "prefill" if kind.startswith("prefill") else kind
                if (kind.startswith("decode") or self.compile_prefill) and self.compiler.active(step):
                    self.compiler.give_up(err, step)  # give up compiling (this kind), not graphs
                    return self._replay(kind, forward, rows, width, adapter, extra)
                if kind == "decode-flex":  # give up FlexAttention, not graphs
                    raise FlexCaptureFailed("FlexAttention decode step could not be captured") from err
                log.exception("CUDA graph capture failed; running eagerly from now on")
                self.use_graphs = False
                return forward(rows, width, {"adapter_names": [adapter] * rows} if adapter else {})
            log.info("captured a %s graph: %d rows, %d columns, adapter %s", kind, rows, width, adapter or "none")
        graph, output = self.graphs[key]
        graph.replay()
        return output

    def capture(self, forward: Any, rows: int, width: int, adapter: str | None) -> tuple[Any, StepOutput]:
        """Warm up on a side stream, then capture. The warm-up runs write the same keys and values the real
        step writes (same inputs), so running them is harmless."""
        import torch

        with adapter_scope(self.model, adapter):
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_RUNS):
                    forward(rows, width, {})
            torch.cuda.current_stream().wait_stream(stream)
            # Captured by hand rather than under `torch.cuda.graph`, whose entry runs gc.collect() and
            # empty_cache() before every capture (a large share of a capture's time in a big process).
            graph = torch.cuda.CUDAGraph()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                try:
                    output = forward(rows, width, {})
                finally:
                    graph.capture_end()
            torch.cuda.current_stream().wait_stream(stream)
        self.captures += 1
        return graph, output


def sdpa_backends(names: str) -> list[Any]:
    """torch SDPBackend members for a comma-separated list of flash, efficient, cudnn, math ('' : none)."""
    if not names.strip():
        return []
    from torch.nn.attention import SDPBackend

    members = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    unknown = [n for n in names.split(",") if n.strip() not in members]
    if unknown:
        raise SettingError(f"TUNEBENCH_SDPA_BACKEND: unknown {unknown}; allowed: {', '.join(members)}")
    return [members[n.strip()] for n in names.split(",")]


@contextlib.contextmanager
def adapter_scope(model: Any, adapter: str | None) -> Iterator[None]:
    """Make `adapter` the one peft applies (BASE: none) while a graph is captured, then restore."""
    if adapter is None or not hasattr(model, "disable_adapter"):
        yield
        return
    if adapter == BASE:
        with model.disable_adapter():
            yield
        return
    previous = model.active_adapter
    model.set_adapter(adapter)
    try:
        yield
    finally:
        model.set_adapter(previous)
