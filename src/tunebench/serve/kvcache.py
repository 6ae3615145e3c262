"""A slot-based static KV cache for the batched engine.

Every layer owns two preallocated tensors `[slots, kv_heads, max_len, head_dim]`, views of one tensor per
kind for all layers, so moving sequences between rows is one copy for every layer at once. A running sequence owns one
slot (a row) and its own length; position p of a sequence lives in column p of its row. A forward pass is
bound to a contiguous range of rows and to per-token write columns: `update()` scatters the new keys and
values to those columns and hands attention a view of the rows' first `width` columns, so sequences of
different lengths decode together without padding, copying or concatenating caches. Which columns a token
may see comes from an explicit 4-D mask built by `visible_mask` from per-token positions (position p sees
columns 0..p of its own row).

The last column of every row is scratch: tokens that only fill a shape (left padding in a prefill batch,
idle rows of a decode bucket) write there, and no mask ever exposes it, since `width` stays below it.

The cache may be stored in FP8 (TUNEBENCH_KV_CACHE_DTYPE=fp8, `kv_cache_dtype`; off by default): float8_e4m3fn
with a scale of 1.0, as vLLM's uncalibrated `kv_cache_dtype="fp8"`, so a slot takes half the bytes of bf16 and
decode attention streams half as many. Writes are clamped to +-448, the format's largest finite value, before
the cast (torch 2.13's cast saturates by itself; older versions cast values from 480 up, and infinities, to
NaN). Readers get the model's dtype back: `update()` dequantizes the rows and columns it hands SDPA (prefills,
shared-prefix prefills, SDPA decode steps); with `whole` it hands over the FP8 tensors themselves, which the
Triton decode kernel reads directly (converting in registers) and FlexAttention dequantizes
(`tunebench.serve.decode_attention`). Row moves and prefix copies move the stored bytes (through uint8 views:
indexing kernels cover every byte type on every device).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache

from tunebench.errors import setting_choice
from tunebench.serve import triton_write

KV_DTYPE_ENV = "TUNEBENCH_KV_CACHE_DTYPE"
KV_DTYPES = ("auto", "fp8")  # auto: the model's dtype; fp8: torch.float8_e4m3fn, scale 1.0
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # float8_e4m3fn's largest finite value; writes are clamped to +-FP8_MAX


def kv_cache_dtype(model_dtype: Any) -> Any:
    """The dtype the slot cache stores keys and values in, from TUNEBENCH_KV_CACHE_DTYPE (default auto)."""
    return FP8 if setting_choice(KV_DTYPE_ENV, KV_DTYPES) == "fp8" else model_dtype


def quantize(states: Any) -> Any:
    """Keys or values in the model's dtype -> float8_e4m3fn at scale 1.0, saturating at +-FP8_MAX."""
    return states.clamp(-FP8_MAX, FP8_MAX).to(FP8)


class SlotCache(Cache):
    """Per-layer `[slots, kv_heads, max_len, head_dim]` keys and values; see the module docstring. `dtype` is
    the model's (what attention computes in), `storage_dtype` what the cache holds (default: the same; FP8
    for a quantized cache)."""

    def __init__(self, num_layers: int, slots: int, max_len: int, kv_heads: int, head_dim: int, dtype: Any,
                 device: Any, storage_dtype: Any = None) -> None:
        import torch

        super().__init__(layers=[])
        shape = (num_layers, slots, kv_heads, max_len, head_dim)
        storage = dtype if storage_dtype is None else storage_dtype
        if storage not in (dtype, FP8):
            raise ValueError(f"KV cache storage {storage} for a {dtype} model; allowed: the model's dtype, {FP8}")
        self.compute_dtype = dtype
        self.quantized = storage != dtype  # FP8 storage: writes quantize, SDPA readers dequantize
        self.all_keys = torch.zeros(shape, dtype=storage, device=device)
        self.all_values = torch.zeros(shape, dtype=storage, device=device)
        self.keys, self.values = list(self.all_keys.unbind(0)), list(self.all_values.unbind(0))
        self.slots, self.max_len = slots, max_len
        self._rows: Any = None
        self._cols: Any = None
        self._gather: Any = None
        self._whole = False
        self._fresh = False
        self._lo, self._hi, self._width = 0, 0, 0
        # Under torch.compile's regional mode (`tunebench.serve.compiled`, "layers") the write runs outside
        # the compiled graphs (traced, the layer index would specialize the code per layer), its index a tensor.
        self.opaque_update = False
        # New keys and values go in through one Triton kernel on CUDA (`tunebench.serve.triton_write`: PyTorch's
        # indexed write took 10% of a prefill); tests set it to run the kernel in Triton's interpreter.
        self.fast_write = triton_write.enabled() and self.all_keys.is_cuda and not self.quantized

    @property
    def scratch(self) -> int:
        """The column that shape-filling tokens write to; real tokens use columns below it."""
        return self.max_len - 1

    @property
    def usable(self) -> int:
        """The longest sequence (prompt + generated tokens) a slot holds."""
        return self.max_len - 1

    def bind(self, rows: Any, cols: Any, lo: int, hi: int, width: int, gather: Any = None,
             whole: bool = False, fresh: bool = False) -> None:
        """The next forward pass runs rows lo..hi-1 (`rows`: their indices as an (n, 1) tensor); its token t of
        row i goes to column `cols[i, t]`; attention sees columns 0..width-1. With `gather` (a 1-D tensor of
        row indices) attention reads those rows instead of the slice lo..hi: a prefill captured in a CUDA graph
        cannot bake in where its rows start, so it copies them out (a few hundred MB per prefill, ~0.1 ms).
        With `fresh` (a prefill from column 0) attention gets the pass's own keys and values instead, in token
        order, which is everything such a prefill can see: the mask is then `fresh_mask`. Over an FP8 cache they
        are the model-dtype keys before quantization (as vLLM's prefill attends over its unquantized keys); the
        slots still get them quantized, and every later pass reads those.
        With `whole`, attention gets every slot and column of the layer (views, no copy): decode attention
        with a block mask (`tunebench.serve.decode_attention`) reads only each row's own blocks."""
        self._rows, self._cols, self._lo, self._hi, self._width = rows, cols, lo, hi, width
        self._gather, self._whole, self._fresh = gather, whole, fresh

    def update(self, key_states: Any, value_states: Any, layer_idx: int, cache_kwargs: Any = None,
               **kwargs: Any) -> tuple[Any, Any]:
        if self.opaque_update:
            return _eager_update(self, key_states, value_states, layer_idx)
        return self._update(key_states, value_states, layer_idx)

    def _update(self, key_states: Any, value_states: Any, layer_idx: int) -> tuple[Any, Any]:
        if self.quantized:
            return self._update_fp8(key_states, value_states, layer_idx)
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.fast_write and not torch.compiler.is_compiling() and triton_write.usable(keys, key_states,
                                                                                          value_states):
            triton_write.write(keys, values, key_states, value_states, self._rows, self._cols)
        else:
            # (n, heads, t, dim) -> (n, t, heads, dim): advanced indices around a slice put their dims first.
            keys[self._rows, :, self._cols] = key_states.transpose(1, 2).to(keys.dtype)
            values[self._rows, :, self._cols] = value_states.transpose(1, 2).to(values.dtype)
        if self._whole:
            return keys, values
        if self._fresh:
            return key_states, value_states
        if self._gather is not None:
            return (keys.index_select(0, self._gather)[:, :, :self._width],
                    values.index_select(0, self._gather)[:, :, :self._width])
        return keys[self._lo:self._hi, :, :self._width], values[self._lo:self._hi, :, :self._width]

    def _update_fp8(self, key_states: Any, value_states: Any, layer_idx: int) -> tuple[Any, Any]:
        """`_update` for an FP8 cache: the new keys and values are quantized on the way in; attention gets the
        FP8 tensors themselves with `whole` (the row-length decode kernels: Triton reads FP8, FlexAttention
        dequantizes), the pass's own keys with `fresh`, else the rows and columns it reads dequantized to the
        model's dtype (SDPA, eager; a prefill after a shared prefix)."""
        import torch

        keys, values = self.keys[layer_idx], self.values[layer_idx]
        for cache, states in ((keys, key_states), (values, value_states)):
            cache.view(torch.uint8)[self._rows, :, self._cols] = quantize(states.transpose(1, 2)).view(torch.uint8)
        if self._whole:
            return keys, values
        if self._fresh:
            return key_states, value_states
        dtype = key_states.dtype
        if self._gather is not None:
            return tuple(_rows_of(cache[:, :, :self._width], self._gather).to(dtype) for cache in (keys, values))
        return (keys[self._lo:self._hi, :, :self._width].to(dtype),
                values[self._lo:self._hi, :, :self._width].to(dtype))

    def move(self, src: list[int], dst: list[int], lengths: list[int]) -> None:
        """Copy the first `lengths[i]` columns of slot `src[i]` to slot `dst[i]` in every layer (compaction
        after sequences leave; no slot is both a source and a destination). Columns past a sequence's own
        length are never read. One direct copy per slot and kind, every layer at once: an indexed copy of
        every moved row went through a temporary of all of them, twice the bytes, and the padded longest
        length (H200, 3B: 74 ms of a 1.5 s burst of 512 requests, lead-21)."""
        import torch

        for both in (self.all_keys, self.all_values):
            if self.quantized:  # the bytes as they are
                both = both.view(torch.uint8)
            for s, d, length in zip(src, dst, lengths, strict=True):
                both[:, d, :, :length].copy_(both[:, s, :, :length])

    def write_prefix(self, slots: Any, keys: Any, values: Any) -> None:
        """Columns 0..P-1 of `slots` (an index tensor) get a shared prefix's keys and values
        ([layers, kv_heads, P, head_dim] each, the model's dtype), in one copy per kind for every layer and
        slot (quantized first for an FP8 cache)."""
        import torch

        length = keys.shape[2]
        if self.quantized:
            for both, prefix in ((self.all_keys, keys), (self.all_values, values)):
                both.view(torch.uint8)[:, slots, :, :length] = quantize(prefix[:, None]).view(torch.uint8)
            return
        self.all_keys[:, slots, :, :length] = keys[:, None].to(self.all_keys.dtype)
        self.all_values[:, slots, :, :length] = values[:, None].to(self.all_values.dtype)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # every forward here passes explicit position ids and a 4-D mask; nothing asks

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_len


def _rows_of(cache: Any, rows: Any) -> Any:
    """cache[rows] for an FP8 tensor, selected as bytes (index kernels cover uint8 on every device)."""
    import torch

    return cache.view(torch.uint8).index_select(0, rows).view(cache.dtype)


@torch.compiler.disable
def _eager_update(cache: SlotCache, key_states: Any, value_states: Any, layer_idx: int) -> tuple[Any, Any]:
    """SlotCache._update, never traced by torch.compile (a graph break where a compiled layer calls it). The
    compiled layers hand the index as a 0-d CPU tensor (`tunebench.serve.compiled`)."""
    return cache._update(key_states, value_states, int(layer_idx))


def visible_mask(positions: Any, width: int, additive_dtype: Any = None) -> Any:
    """(n, t) positions -> (n, 1, t, width) mask: position p sees columns 0..p of its row. Boolean (True =
    attend) for SDPA; an additive float mask in `additive_dtype` for attention that adds its mask."""
    import torch

    columns = torch.arange(width, device=positions.device)
    mask = (columns <= positions[..., None])[:, None]
    if additive_dtype is None:
        return mask
    zero = torch.zeros((), dtype=additive_dtype, device=positions.device)
    return torch.where(mask, zero, torch.finfo(additive_dtype).min)


def fresh_mask(cols: Any, scratch: int, additive_dtype: Any = None) -> Any:
    """(n, t) write columns of a left-padded prefill from column 0 -> (n, 1, t, t) mask over the pass's own
    keys (`SlotCache.bind(fresh=True)`): token i sees the prompt's tokens j <= i, the same keys `visible_mask`
    exposes through the cache's columns; a padding token (written to `scratch`) sees only itself, so no row
    of the softmax is empty."""
    import torch

    t = cols.shape[1]
    order = torch.arange(t, device=cols.device)
    causal = order[None, :] <= order[:, None]
    itself = order[None, :] == order[:, None]
    mask = (causal[None] & ((cols != scratch)[:, None, :] | itself[None]))[:, None]
    if additive_dtype is None:
        return mask
    zero = torch.zeros((), dtype=additive_dtype, device=cols.device)
    return torch.where(mask, zero, torch.finfo(additive_dtype).min)


def kv_geometry(probe_cache: Any) -> tuple[int, int, int, Any]:
    """(layers, kv heads, head dim, dtype) read from a one-token DynamicCache of the model."""
    layers = probe_cache.layers
    keys = layers[0].keys
    return len(layers), keys.shape[1], keys.shape[-1], keys.dtype


def bytes_per_slot(num_layers: int, kv_heads: int, head_dim: int, max_len: int, dtype: Any) -> int:
    import torch

    return 2 * num_layers * kv_heads * head_dim * max_len * torch.empty((), dtype=dtype).element_size()


# On the CPU the cache lives in the machine's RAM beside everything else: `serve` with its default limits
# (32 slots of 2,048 + 256 tokens) sized 3.2 GiB for SmolLM2-135M in float32, more than a laptop should give a
# 135M model that a 2-core CPU decodes a few sequences of at a time. Slots of the request limits' length are
# allocated up to this budget (TUNEBENCH_CPU_KV_GIB overrides it).
CPU_KV_BUDGET_GIB = 1.0


def slots_that_fit(wanted: int, per_slot: int, device: Any, reserve_bytes: int, fraction: float = 0.9) -> int:
    """How many slots fit in the device's free memory after a reserve for activations; on the CPU, in
    CPU_KV_BUDGET_GIB (always at least one slot)."""
    import os

    import torch

    if getattr(device, "type", str(device)) != "cuda":
        budget = float(os.environ.get("TUNEBENCH_CPU_KV_GIB", CPU_KV_BUDGET_GIB)) * 2**30
        return max(1, min(wanted, int(budget // max(per_slot, 1))))
    free, _total = torch.cuda.mem_get_info(device)
    # Blocks torch's caching allocator holds but no tensor uses are free to this process, though not to the driver.
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    room = int(free * fraction) - reserve_bytes
    return max(1, min(wanted, room // per_slot))
