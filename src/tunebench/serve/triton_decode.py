"""Decode attention as one Triton kernel over the slot cache: each (row, head) program reads exactly its row's
own tokens, no more.

Why not FlexAttention (`tunebench.serve.decode_attention`'s other path)? On the H200 its decode kernel ran at
~2.6 TB/s, 60% of copy bandwidth, and 56% of a 256-row step (benchmarks/results/2026-12-02-h200-engine-4-*):
it reads whole 32-column blocks, pads the query to every slot and pays for a block mask per step, and its
Triton knobs did not move it. A decode query is one token, so attention is a dot product and a weighted sum
per (row, head) over that row's keys and values, which lie contiguous in the cache
(`[slots, kv_heads, columns, head_dim]`): a program streams them once, in TILE-token tiles, with an online
softmax (as flash-decoding does), and exits after the row's length. The lengths come from a device tensor, so
one compiled kernel and one CUDA graph per row count serve every mix of lengths.

Two versions ("tiles", "lanes"; TUNEBENCH_TRITON_DECODE picks one with its tile and warps). "tiles" keeps one
running max and sum per program, so every tile ends in a reduction across the tile's rows (across warps);
"lanes" keeps them per tile lane and merges the lanes once at the end, so the loop only streams and
multiplies. On the H200, one layer of the 3B at ragged lengths 100..164 (benchmarks/decode_kernels.py,
benchmarks/results/2026-12-03-h200-lead-2-*): "lanes" with 32-token tiles and 2 warps took 0.123 ms at 256
rows and 0.236 ms at 512 (2.8-2.9 TB/s of the keys and values it must read), against 0.155 / 0.273 ms for
FlexAttention and 0.199 / 0.384 ms for "tiles" at 64 tokens and 4 warps.

A third ("split", the default since 2026-12-03) is "lanes" over a head size that is not a power of two as two
power-of-two parts (the 3B's 80 = 64 + 16), where "lanes" pads it to 128 (one kernel: "lanes" passes the padded
size and no second part). Same layer (lead-16, lead-18): at
32-token tiles and 2 warps it was only 2% faster than "lanes" (0.234 vs 0.238 ms at 512 rows: the loop is not
bound by the padded lanes' arithmetic), but it made smaller tiles pay: 16-token tiles and 1 warp took 0.113 ms at
256 rows and 0.206 at 512 (3.3 TB/s), and the 512-row compiled decode step went 12.6 -> 11.5 ms (lead-19).

A fourth ("ahead") is "split" with the next tile's keys and values loaded before this tile's arithmetic, so a
program has two tiles' loads in flight. With 8-token tiles and 2 warps it is the default from 64 rows up
(VARIANTS_BY_ROWS: 3.5-4.0 TB/s on the H200 at 128-512 rows, lead-27); a lone sequence keeps "split" at 16.

No split over the keys: at the batch sizes this engine serves, rows x heads programs (8,192 at 256 rows of a
32-head model) already fill the GPU; a lone long sequence would want the split (it is left out, not needed for
the measured shapes). Off CUDA it runs under Triton's interpreter (TRITON_INTERPRET=1), which is how the CPU
tests check it against SDPA.

Over an FP8 slot cache (TUNEBENCH_KV_CACHE_DTYPE=fp8, `tunebench.serve.kvcache`) the same kernels take
float8_e4m3fn keys and values (Triton's float8e4nv: the loads move half the bytes and `.to(tl.float32)`
converts them in registers; scale 1.0, so no multiply). Triton compiles one kernel per pointer dtype. On the
GPU this needs FP8 conversions (compute capability 8.9 and up: Ada, Hopper); Triton's interpreter emulates
them, so the CPU tests run the FP8 kernel too.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from tunebench.errors import SettingError

KERNELS = ("tiles", "lanes", "split", "ahead")
# The default variant (kernel:tile:warps) by rows in the step, the first whose least row count the step reaches;
# TUNEBENCH_TRITON_DECODE sets one for every row count. On the H200 (lead-27, one layer of the 3B at ragged
# lengths 100..164): ahead:8:2 took 0.048 / 0.089 / 0.172 ms at 128 / 256 / 512 rows against split:16:1's 0.061 /
# 0.110 / 0.206 (3.5-4.0 against 2.8-3.3 TB/s), the two tied at 32 rows (0.035 ms), and at 1 row, where a
# program's chain of dependent tile loads is the whole time, split:16:1's 9 tiles took 0.038 ms against 0.064
# for ahead:8:2's 17. The switch sits between the measured tie and the first measured gain.
VARIANTS_BY_ROWS = ((64, "ahead:8:2"), (0, "split:16:1"))


def available() -> str | None:
    """None when the kernel can run here, else why not (no Triton; no CUDA and no interpreter)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    import torch

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernel in Triton's interpreter)"
    return None


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def decode_kernel(Q, K, V, Out, Lengths, scale_log2,
                      stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                      stride_ob, stride_oh,
                      GROUP: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, TILE: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        length = tl.load(Lengths + row)
        dims = tl.arange(0, BLOCK_D)
        in_dim = dims < D
        # The softmax runs in base 2: scale * log2(e) folded into the query once.
        q = tl.load(Q + row * stride_qb + head * stride_qh + dims, mask=in_dim, other=0.0).to(tl.float32)
        q = q * scale_log2
        keys = K + row * stride_kb + kv_head * stride_kh
        values = V + row * stride_vb + kv_head * stride_vh
        best = tl.full((), float("-inf"), tl.float32)
        total = tl.zeros((), tl.float32)
        acc = tl.zeros((BLOCK_D,), tl.float32)
        for start in range(0, length, TILE):
            cols = start + tl.arange(0, TILE)
            in_row = cols < length
            where = in_row[:, None] & in_dim[None, :]
            k = tl.load(keys + cols[:, None] * stride_kn + dims[None, :], mask=where, other=0.0).to(tl.float32)
            scores = tl.where(in_row, tl.sum(k * q[None, :], axis=1), float("-inf"))
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            weights = tl.exp2(scores - new_best)
            shrink = tl.exp2(best - new_best)
            v = tl.load(values + cols[:, None] * stride_vn + dims[None, :], mask=where, other=0.0).to(tl.float32)
            total = total * shrink + tl.sum(weights, axis=0)
            acc = acc * shrink + tl.sum(weights[:, None] * v, axis=0)
            best = new_best
        out = acc / total
        tl.store(Out + row * stride_ob + head * stride_oh + dims, out.to(Out.dtype.element_ty), mask=in_dim)

    @triton.jit
    def lanes_kernel(Q, K, V, Out, Lengths, scale_log2,
                     stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                     stride_ob, stride_oh,
                     GROUP: tl.constexpr, D: tl.constexpr, HEAD: tl.constexpr, REST: tl.constexpr,
                     TILE: tl.constexpr):
        # The same attention with the online softmax kept per tile lane (column offset within a tile): the loop
        # does no reduction across the tile, so no cross-warp exchange per tile; the lanes are merged once.
        # The head's dimensions come in two power-of-two parts, HEAD and REST ("split": 80 = 64 + 16, the 3B's),
        # so no lane loads, multiplies and carries a padded dimension (48 of 128 at 80); "lanes" passes the
        # next power of two as HEAD (masked past D) and REST = 0, which leaves the second part out.
        row = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        length = tl.load(Lengths + row)
        dims = tl.arange(0, HEAD)
        in_dim = dims < D
        q = tl.load(Q + row * stride_qb + head * stride_qh + dims, mask=in_dim, other=0.0).to(tl.float32)
        q = q * scale_log2
        keys = K + row * stride_kb + kv_head * stride_kh
        values = V + row * stride_vb + kv_head * stride_vh
        best = tl.full((TILE,), float("-inf"), tl.float32)
        total = tl.zeros((TILE,), tl.float32)
        acc = tl.zeros((TILE, HEAD), tl.float32)
        if REST > 0:
            rest = HEAD + tl.arange(0, REST)
            q2 = tl.load(Q + row * stride_qb + head * stride_qh + rest).to(tl.float32) * scale_log2
            acc2 = tl.zeros((TILE, REST), tl.float32)
        for start in range(0, length, TILE):
            cols = start + tl.arange(0, TILE)
            in_row = cols < length
            where = in_row[:, None] & in_dim[None, :]
            k = tl.load(keys + cols[:, None] * stride_kn + dims[None, :], mask=where, other=0.0).to(tl.float32)
            v = tl.load(values + cols[:, None] * stride_vn + dims[None, :], mask=where, other=0.0).to(tl.float32)
            scores = tl.sum(k * q[None, :], axis=1)
            if REST > 0:
                k2 = tl.load(keys + cols[:, None] * stride_kn + rest[None, :], mask=in_row[:, None],
                             other=0.0).to(tl.float32)
                v2 = tl.load(values + cols[:, None] * stride_vn + rest[None, :], mask=in_row[:, None],
                             other=0.0).to(tl.float32)
                scores += tl.sum(k2 * q2[None, :], axis=1)
            new_best = tl.where(in_row, tl.maximum(best, scores), best)
            shrink = tl.where(in_row, tl.exp2(best - new_best), 1.0)
            weights = tl.where(in_row, tl.exp2(scores - new_best), 0.0)
            total = total * shrink + weights
            acc = acc * shrink[:, None] + weights[:, None] * v
            if REST > 0:
                acc2 = acc2 * shrink[:, None] + weights[:, None] * v2
            best = new_best
        top = tl.max(best, axis=0)
        merge = tl.exp2(best - top)  # lanes that never held a column: exp2(-inf) = 0
        norm = tl.sum(total * merge, axis=0)
        out = tl.sum(acc * merge[:, None], axis=0) / norm
        tl.store(Out + row * stride_ob + head * stride_oh + dims, out.to(Out.dtype.element_ty), mask=in_dim)
        if REST > 0:
            out2 = tl.sum(acc2 * merge[:, None], axis=0) / norm
            tl.store(Out + row * stride_ob + head * stride_oh + rest, out2.to(Out.dtype.element_ty))

    @triton.jit
    def ahead_kernel(Q, K, V, Out, Lengths, scale_log2,
                     stride_qb, stride_qh, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                     stride_ob, stride_oh,
                     GROUP: tl.constexpr, D: tl.constexpr, HEAD: tl.constexpr, REST: tl.constexpr,
                     TILE: tl.constexpr):
        # "split" with the next tile's keys and values loaded before this tile's arithmetic (double-buffered
        # in registers), so a program has two tiles' loads in flight instead of waiting on each in turn.
        row = tl.program_id(0)
        head = tl.program_id(1)
        kv_head = head // GROUP
        length = tl.load(Lengths + row)
        dims = tl.arange(0, HEAD)
        in_dim = dims < D
        q = tl.load(Q + row * stride_qb + head * stride_qh + dims, mask=in_dim, other=0.0).to(tl.float32)
        q = q * scale_log2
        keys = K + row * stride_kb + kv_head * stride_kh
        values = V + row * stride_vb + kv_head * stride_vh
        best = tl.full((TILE,), float("-inf"), tl.float32)
        total = tl.zeros((TILE,), tl.float32)
        acc = tl.zeros((TILE, HEAD), tl.float32)
        cols = tl.arange(0, TILE)
        in_row = cols < length
        where = in_row[:, None] & in_dim[None, :]
        k = tl.load(keys + cols[:, None] * stride_kn + dims[None, :], mask=where, other=0.0)
        v = tl.load(values + cols[:, None] * stride_vn + dims[None, :], mask=where, other=0.0)
        if REST > 0:
            rest = HEAD + tl.arange(0, REST)
            q2 = tl.load(Q + row * stride_qb + head * stride_qh + rest).to(tl.float32) * scale_log2
            acc2 = tl.zeros((TILE, REST), tl.float32)
            k2 = tl.load(keys + cols[:, None] * stride_kn + rest[None, :], mask=in_row[:, None], other=0.0)
            v2 = tl.load(values + cols[:, None] * stride_vn + rest[None, :], mask=in_row[:, None], other=0.0)
        for start in range(0, length, TILE):
            nxt = start + TILE + tl.arange(0, TILE)
            in_next = nxt < length
            where_next = in_next[:, None] & in_dim[None, :]
            k_next = tl.load(keys + nxt[:, None] * stride_kn + dims[None, :], mask=where_next, other=0.0)
            v_next = tl.load(values + nxt[:, None] * stride_vn + dims[None, :], mask=where_next, other=0.0)
            scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
            if REST > 0:
                k2_next = tl.load(keys + nxt[:, None] * stride_kn + rest[None, :], mask=in_next[:, None], other=0.0)
                v2_next = tl.load(values + nxt[:, None] * stride_vn + rest[None, :], mask=in_next[:, None],
                                  other=0.0)
                scores += tl.sum(k2.to(tl.float32) * q2[None, :], axis=1)
            new_best = tl.where(in_row, tl.maximum(best, scores), best)
            shrink = tl.where(in_row, tl.exp2(best - new_best), 1.0)
            weights = tl.where(in_row, tl.exp2(scores - new_best), 0.0)
            total = total * shrink + weights
            acc = acc * shrink[:, None] + weights[:, None] * v.to(tl.float32)
            if REST > 0:
                acc2 = acc2 * shrink[:, None] + weights[:, None] * v2.to(tl.float32)
                k2, v2 = k2_next, v2_next
            best = new_best
            k, v, in_row = k_next, v_next, in_next
        top = tl.max(best, axis=0)
        merge = tl.exp2(best - top)
        norm = tl.sum(total * merge, axis=0)
        out = tl.sum(acc * merge[:, None], axis=0) / norm
        tl.store(Out + row * stride_ob + head * stride_oh + dims, out.to(Out.dtype.element_ty), mask=in_dim)
        if REST > 0:
            out2 = tl.sum(acc2 * merge[:, None], axis=0) / norm
            tl.store(Out + row * stride_ob + head * stride_oh + rest, out2.to(Out.dtype.element_ty))

    return {"tiles": decode_kernel, "lanes": lanes_kernel, "split": lanes_kernel, "ahead": ahead_kernel}


def head_split(dim: int) -> tuple[int, int]:
    """A head size as (power of two, power of two or 0) when it is one or the sum of two (80 -> 64, 16),
    else (the next power of two, 0): the parts the "split" kernel loads."""
    head = 1 << (dim.bit_length() - 1)
    rest = dim - head
    if rest and rest & (rest - 1):  # not a power of two: pad the whole head instead
        return 1 << dim.bit_length(), 0
    return head, rest


def variant(rows: int = 1) -> tuple[str, int, int, int]:
    """(kernel, tokens per tile, warps, pipeline stages) for a step of `rows` rows: from TUNEBENCH_TRITON_DECODE
    ("lanes:32:4", or with Triton's num_stages as a fourth part, "split:16:1:3") for every row count, else
    VARIANTS_BY_ROWS's (stages: Triton's default)."""
    raw = os.environ.get("TUNEBENCH_TRITON_DECODE") or next(v for least, v in VARIANTS_BY_ROWS if rows >= least)
    try:
        name, tile, warps, *stages = raw.split(":")
        if name not in KERNELS or len(stages) > 1:
            raise ValueError(name)
        numbers = int(tile), int(warps), int(stages[0]) if stages else 0
        if min(numbers[:2]) < 1 or numbers[2] < 0 or numbers[0] & (numbers[0] - 1):
            raise ValueError(raw)
        return name, *numbers
    except ValueError:
        raise SettingError(f"TUNEBENCH_TRITON_DECODE={raw!r}; expected KERNEL:TILE:WARPS[:STAGES], KERNEL one of "
                           f"{', '.join(KERNELS)}, TILE a power of two (e.g. lanes:32:4, split:16:1:3)") from None


def decode_attention(query: Any, key: Any, value: Any, lengths: Any, scale: float) -> Any:
    """query (rows, heads, 1, dim); key, value (slots >= rows, kv_heads, columns, dim) with contiguous last
    dims, in the query's dtype or float8_e4m3fn (an FP8 cache at scale 1: loaded as FP8, converted to fp32 in
    registers); lengths (rows,) int32: row i attends to columns 0..lengths[i]-1 of slot i. Returns (rows, 1,
    heads, dim) in the query's dtype, the layout transformers' attention functions return."""
    import math

    import torch
    import triton

    rows, heads, _one, dim = query.shape
    kv_heads = key.shape[1]
    if heads % kv_heads or key.stride(-1) != 1 or value.stride(-1) != 1 or query.stride(-1) != 1:
        raise ValueError(f"triton decode attention: unsupported layout q{tuple(query.shape)} k{tuple(key.shape)}")
    out = torch.empty((rows, 1, heads, dim), dtype=query.dtype, device=query.device)
    if rows == 0:
        return out
    shape: dict[str, int] = {}
    name, tile, warps, stages = variant(rows)
    if stages:
        shape["num_stages"] = stages
    if name == "tiles":
        shape["BLOCK_D"] = triton.next_power_of_2(dim)
    else:
        head, rest = head_split(dim) if name in ("split", "ahead") else (triton.next_power_of_2(dim), 0)
        shape.update(HEAD=head, REST=rest)
    _kernel()[name][(rows, heads)](
        query, key, value, out, lengths, float(scale) * math.log2(math.e),
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), out.stride(0), out.stride(2),
        GROUP=heads // kv_heads, D=dim, TILE=tile, num_warps=warps, **shape)
    return out
