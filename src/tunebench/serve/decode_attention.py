"""Decode attention that reads only each row's own columns: FlexAttention over the whole slot cache with a
block mask built on the device from the rows' positions.

SDPA over the slot cache reads a width bucket of columns for every row (the longest row's length, rounded up),
and its graph is keyed by that width, so an engine captures a graph per (rows, width) pair. Here a decode step's
attention runs over every slot and every column, and the block mask tells the kernel, per row, how many
KV_BLOCK-column blocks hold that row's tokens (rows past the step's rows get none): a row of 130 tokens reads
160 columns (5 blocks of 32) whatever the others hold, and the step is the same kernel for any lengths, so
its graph is keyed by the number of rows alone. The query is padded to every slot for the same reason: one
shape for the kernel, so torch.compile builds it once per engine (B and H must be concrete for the
split-KV decoding kernel), and padding rows cost a program that exits at once.

The model reaches this through transformers' attention registry: `DecodeAttention.scope()` switches the
model's attention implementation to NAME for one forward; the registered function runs FlexAttention when the
mask is a BlockMask (4-D, so transformers passes it through untouched) and transformers' SDPA otherwise
(prefills keep their explicit 4-D boolean mask).

The same seam carries the hand-written kernel (`tunebench.serve.triton_decode`, kernel "triton"): its "mask" is
the rows' lengths, and it reads exactly each row's tokens, without blocks, query padding or a block mask.

Over an FP8 slot cache (TUNEBENCH_KV_CACHE_DTYPE=fp8) the Triton kernel reads the FP8 keys and values as they
are; FlexAttention and SDPA get them dequantized to the query's dtype first, which for FlexAttention is a copy
of the whole layer cache per step (correct, and slow: the Triton kernel is the FP8 cache's fast path).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("tunebench.serve")
NAME = "tunebench_slots"
KV_BLOCK = 32  # columns per block: a row reads its length rounded up to this (the kernel's BLOCK_N follows it)
KERNELS = ("triton", "flex")  # the decode kernels behind DecodeAttention (`tunebench.serve.triton_decode`; torch's)
Q_BLOCK = 128  # one query block covers the single decode position (a multiple of the kernel's BLOCK_M)
_compiled: dict[str, Any] = {}
# Triton options for the compiled kernel on CUDA (num_warps, num_stages, BLOCK_N, SPLIT_KV ...), from
# TUNEBENCH_FLEX_OPTIONS as JSON; none by default (torch's heuristics). For benchmarks/decode_profile.py.
KERNEL_OPTIONS: dict[str, Any] = {}


def register() -> None:
    """Register NAME with transformers (attention, and SDPA's mask for masks it builds itself); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if NAME in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        return
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
              dropout: float = 0.0, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention signature: query (rows, heads, 1, dim); with a BlockMask (from
    `DecodeAttention.mask`), key and value are the whole layer cache (slots, kv_heads, columns, dim). Returns
    (rows, 1, heads, dim)."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    if torch.is_tensor(attention_mask) and attention_mask.dtype == torch.int32:  # row lengths: the Triton kernel
        from tunebench.serve.triton_decode import decode_attention

        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return decode_attention(query, key, value, attention_mask.view(-1), scale), None
    if key.dtype == torch.float8_e4m3fn:  # an FP8 slot cache (`tunebench.serve.kvcache`): dequantized for torch
        key, value = key.to(query.dtype), value.to(query.dtype)
    if not isinstance(attention_mask, BlockMask):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    rows, slots = query.shape[0], key.shape[0]
    if rows < slots:  # one kernel shape for every step: idle rows have no blocks to read
        query = torch.cat([query, query.new_zeros((slots - rows, *query.shape[1:]))])
    flex = flex_function(query.device.type)
    options = {"kernel_options": dict(KERNEL_OPTIONS)} if KERNEL_OPTIONS and query.is_cuda else {}
    out = flex(query, key, value, block_mask=attention_mask, scale=scaling,
               enable_gqa=query.shape[1] != key.shape[1], **options)
    return out[:rows].transpose(1, 2).contiguous(), None


def flex_function(device_type: str) -> Any:
    """torch's flex_attention, compiled on CUDA (one compiled kernel per cache shape; eager elsewhere, where
    torch runs its unfused reference, fine for tests)."""
    if device_type not in _compiled:
        import torch
        from torch.nn.attention.flex_attention import flex_attention

        if device_type == "cuda":
            # Shapes stay static (the split-KV kernel needs a concrete batch); each engine's cache shape is one
            # more entry, so allow a few before dynamo falls back to the unfused version.
            config = torch._dynamo.config
            name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, name, max(getattr(config, name), 64))
            _compiled[device_type] = torch.compile(flex_attention, dynamic=False)
        else:
            _compiled[device_type] = flex_attention
    return _compiled[device_type]


class DecodeAttention:
    """Builds a decode step's BlockMask from the runner's per-row positions (a device buffer a CUDA graph
    reads at replay), and scopes the model's attention implementation to NAME while a step runs."""

    def __init__(self, model: Any, positions: Any, columns: int, block: int = KV_BLOCK,
                 kernel: str = "flex") -> None:
        import json
        import os

        import torch

        if kernel not in KERNELS:
            raise ValueError(f"decode attention kernel {kernel!r}; allowed: {', '.join(KERNELS)}")
        if kernel == "triton":
            from tunebench.serve.triton_decode import available

            if (why := available()) is not None:
                raise RuntimeError(why)
        self.kernel = kernel
        register()
        KERNEL_OPTIONS.clear()
        KERNEL_OPTIONS.update(json.loads(os.environ.get("TUNEBENCH_FLEX_OPTIONS", "{}")))
        self.model, self.positions, self.columns = model, positions, columns
        self.block = block
        self.blocks = -(-columns // block)
        device = positions.device
        self.slot_index = torch.arange(positions.shape[0], device=device)
        self.block_index = torch.arange(self.blocks, dtype=torch.int32, device=device)
        seen = positions  # one closure over one buffer for the engine's life: dynamo compiles it once

        def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
            return kv <= seen[b]

        self.mask_mod = mask_mod

    def mask(self, rows: int) -> Any:
        """Rows 0..rows-1 see columns 0..position (their blocks); the other slots see nothing. For the Triton
        kernel, the rows' lengths as an int32 (rows, 1, 1, 1) tensor: 4-D, so transformers passes it through as
        a prepared mask, and int32, which no mask transformers builds is, so `attention` knows it."""
        import torch
        from torch.nn.attention.flex_attention import BlockMask

        if self.kernel == "triton":
            return (self.positions[:rows] + 1).to(torch.int32).view(rows, 1, 1, 1)
        slots = self.positions.shape[0]
        counts = torch.where(self.slot_index < rows, self.positions // self.block + 1, 0)
        counts = counts.to(torch.int32).view(slots, 1, 1)
        indices = self.block_index.expand(slots, 1, 1, self.blocks).contiguous()
        extra = {"compute_q_blocks": False} if _takes_compute_q_blocks() else {}
        return BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=(Q_BLOCK, self.block), mask_mod=self.mask_mod,
                                        seq_lengths=(1, self.columns), **extra)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """The model's attention implementation is NAME for the forward inside (restored after)."""
        config = self.model.config
        previous = config._attn_implementation
        config._attn_implementation = NAME
        try:
            yield
        finally:
            config._attn_implementation = previous


def _takes_compute_q_blocks() -> bool:
    import inspect

    from torch.nn.attention.flex_attention import BlockMask

    return "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters
