"""The slot cache's write of new keys and values as one Triton kernel (`tunebench.serve.kvcache`).

Why: the write `cache[rows, :, cols] = states` (advanced indices around a slice) runs PyTorch's generic
index kernel, which computes an offset per element (2 bytes each): on the H200 (3B, 32 x 104 prefill) it took
3.5 ms of a 34 ms compiled prefill, ~310 GB/s, and 0.24 ms of a 2.6 ms one-row decode step
(benchmarks/results/2026-12-03-h200-lead-13-*). Here one program moves one token: every head's `head_dim`
contiguous values of its key and its value, to its row and column of the layer's cache.

Used on CUDA for a cache in the model's dtype, outside torch.compile's tracing (a traced write stays PyTorch's,
which the compiler fuses) and with TUNEBENCH_TRITON_KV_WRITE unset or 1; 0 gives PyTorch's write back (for
comparisons). Off CUDA it runs only when a test calls it, in Triton's interpreter.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from tunebench.errors import SettingError

ENV = "TUNEBENCH_TRITON_KV_WRITE"


@functools.cache
def enabled() -> bool:
    """TUNEBENCH_TRITON_KV_WRITE (default 1) and Triton importable; read once per process."""
    raw = os.environ.get(ENV, "1").strip()
    if raw not in ("0", "1"):
        raise SettingError(f"{ENV}={raw!r}; allowed: 0 (PyTorch's indexed write), 1 (the Triton kernel, default)")
    if raw == "0":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def write_kernel(Ks, Vs, Kc, Vc, Rows, Cols, T,
                     ks_n, ks_h, ks_t, vs_n, vs_h, vs_t, kc_b, kc_h, kc_c, vc_b, vc_h, vc_c, rows_n, cols_n, cols_t,
                     HEADS: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
        token = tl.program_id(0)
        i = token // T
        j = token % T
        slot = tl.load(Rows + i * rows_n).to(tl.int64)
        col = tl.load(Cols + i * cols_n + j * cols_t).to(tl.int64)
        heads = tl.arange(0, BLOCK_H)[:, None]
        dims = tl.arange(0, BLOCK_D)[None, :]
        mask = (heads < HEADS) & (dims < D)
        src = i.to(tl.int64) * ks_n + heads * ks_h + j * ks_t + dims
        dst = slot * kc_b + heads * kc_h + col * kc_c + dims
        tl.store(Kc + dst, tl.load(Ks + src, mask=mask).to(Kc.dtype.element_ty), mask=mask)
        src = i.to(tl.int64) * vs_n + heads * vs_h + j * vs_t + dims
        dst = slot * vc_b + heads * vc_h + col * vc_c + dims
        tl.store(Vc + dst, tl.load(Vs + src, mask=mask).to(Vc.dtype.element_ty), mask=mask)

    return write_kernel


def usable(keys: Any, key_states: Any, value_states: Any) -> bool:
    """Whether `write` can take these: last dims contiguous and the cache in the states' dtype (an FP8 cache's
    write also quantizes, which this kernel does not)."""
    return (keys.stride(-1) == 1 and key_states.stride(-1) == 1 and value_states.stride(-1) == 1
            and keys.dtype == key_states.dtype)


def write(keys: Any, values: Any, key_states: Any, value_states: Any, rows: Any, cols: Any) -> None:
    """keys[rows[i], :, cols[i, t]] = key_states[i, :, t] (and the values), for every row i and token t:
    keys, values (slots, heads, columns, dim); states (n, heads, t, dim); rows (n, 1) or (n,), cols (n, t)."""
    import triton

    n, heads, tokens, dim = key_states.shape
    if n == 0 or tokens == 0:
        return
    _kernel()[(n * tokens,)](
        key_states, value_states, keys, values, rows, cols, tokens,
        key_states.stride(0), key_states.stride(1), key_states.stride(2),
        value_states.stride(0), value_states.stride(1), value_states.stride(2),
        keys.stride(0), keys.stride(1), keys.stride(2), values.stride(0), values.stride(1), values.stride(2),
        rows.stride(0), cols.stride(0), cols.stride(1),
        HEADS=heads, D=dim, BLOCK_H=triton.next_power_of_2(heads), BLOCK_D=triton.next_power_of_2(dim),
        num_warps=4)
