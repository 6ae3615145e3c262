"""The FP8 slot cache (TUNEBENCH_KV_CACHE_DTYPE=fp8, `tunebench.serve.kvcache`), on the CPU in fp32 models.

Two kinds of check. Exact: the engine over an FP8 cache gives the tokens and log-probabilities of the fp32
engine whose keys and values are rounded through FP8 as they are written (an emulation: same values, fp32
storage), with every attention choice and through a shared prefix, so every write and every reader
(prefill after a shared prefix, SDPA and FlexAttention decode, the Triton kernel, compaction) sees the values
the quantization gives and nothing else; a prefill from column 0 attends over its own keys before rounding.
Close: against the unquantized cache, logits stay within a few percent (FP8 at scale 1 keeps 3 mantissa bits;
a cache whose values read as zeros moves these logits by ~50x more than FP8 does). The Triton kernel runs in
Triton's interpreter (TRITON_INTERPRET=1, tests/conftest.py), which emulates float8e4nv loads and conversions;
whether the GPU's compiled kernel agrees is benchmarks/decode_kernels.py --kv-dtype's job.
"""

from __future__ import annotations

import pytest
import torch
from test_serve_kvcache import PROMPTS

from tunebench.serve import kvcache
from tunebench.serve.kvcache import FP8, SlotCache, kv_cache_dtype, quantize
from tunebench.serve.offline import cached_prefix, offline_engine, run_offline
from tunebench.serve.requests import GenerationRequest
from tunebench.serve.sampling import SamplingParams

TEXTS = ["The engine makes a rattling noise", "Plant the tomato seedlings", "Anna: are we still on for lunch?",
         "Solder the resistor to the board", "The rocket reached orbit", "Simmer the onions in butter"]


def rounded_through_fp8(monkeypatch) -> None:
    """The emulation: an unquantized cache is handed keys and values already rounded through FP8, except what a
    prefill from column 0 attends over: its own keys, unrounded (the slots get them rounded)."""
    update, write_prefix = SlotCache._update, SlotCache.write_prefix

    def fake(states):
        return quantize(states).to(states.dtype)

    def rounded(self, k, v, i):
        out = update(self, fake(k), fake(v), i)
        return (k, v) if self._fresh else out

    monkeypatch.setattr(SlotCache, "_update", rounded)
    monkeypatch.setattr(SlotCache, "write_prefix", lambda self, s, k, v: write_prefix(self, s, fake(k), fake(v)))


def engine_run(served, monkeypatch, dtype: str, attention: str = "sdpa", new_tokens: int = 16, prefix=None,
               texts=TEXTS, engines=None):
    """Greedy (tokens, log-probabilities) of `texts` through the offline engine, 4 slots (rows join, leave and
    move), with the KV cache in `dtype` (the engine is appended to `engines`)."""
    monkeypatch.setenv("TUNEBENCH_KV_CACHE_DTYPE", dtype)
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", attention)
    monkeypatch.setenv("TUNEBENCH_FLEX_MIN_ROWS", "1" if attention == "triton" else "0")
    model, tok = served.model, served.tokenizer
    engine = offline_engine(model, tok, longest=96, slots=4)
    assert engine.cache.quantized == (dtype == "fp8")
    assert engine.cache.all_keys.dtype == (FP8 if dtype == "fp8" else model.dtype)
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
                for t in texts]
    completions = run_offline(engine, requests, prefix=prefix)
    assert engine.runner.flex_error is None
    if engines is not None:
        engines.append(engine)
    return [[t.id for t in c.tokens] for c in completions], [[t.logprob for t in c.tokens] for c in completions]


def assert_same(got, expected, abs_tol=1e-5):
    assert got[0] == expected[0]
    for a, b in zip(got[1], expected[1], strict=True):
        assert a == pytest.approx(b, abs=abs_tol)


def test_the_cache_dtype_setting_defaults_to_the_model_and_refuses_unknown_values(monkeypatch):
    monkeypatch.delenv("TUNEBENCH_KV_CACHE_DTYPE", raising=False)
    assert kv_cache_dtype(torch.bfloat16) is torch.bfloat16
    for value, expected in (("auto", torch.float32), ("fp8", FP8), (" FP8 ", FP8)):
        monkeypatch.setenv("TUNEBENCH_KV_CACHE_DTYPE", value)
        assert kv_cache_dtype(torch.float32) is expected
    monkeypatch.setenv("TUNEBENCH_KV_CACHE_DTYPE", "int4")
    with pytest.raises(ValueError, match=r"TUNEBENCH_KV_CACHE_DTYPE='int4'; allowed: auto, fp8"):
        kv_cache_dtype(torch.bfloat16)


def test_the_engine_caches_in_the_model_dtype_by_default_and_refuses_a_bad_value(llama, monkeypatch):
    monkeypatch.delenv("TUNEBENCH_KV_CACHE_DTYPE", raising=False)
    cache = offline_engine(llama.model, llama.tokenizer, longest=16, slots=1).cache
    assert not cache.quantized and cache.all_keys.dtype is llama.model.dtype is torch.float32
    monkeypatch.setenv("TUNEBENCH_KV_CACHE_DTYPE", "e5m2")
    with pytest.raises(ValueError, match="TUNEBENCH_KV_CACHE_DTYPE='e5m2'; allowed: auto, fp8"):
        offline_engine(llama.model, llama.tokenizer, longest=16, slots=1)


def test_fp8_slots_take_half_the_bytes_so_twice_as_many_fit(monkeypatch):
    per_slot = {d: kvcache.bytes_per_slot(32, 32, 80, 165, d) for d in (torch.bfloat16, FP8)}
    assert per_slot[FP8] * 2 == per_slot[torch.bfloat16]
    monkeypatch.setenv("TUNEBENCH_CPU_KV_GIB", str(100 * per_slot[torch.bfloat16] / 2**30))
    fit = {d: kvcache.slots_that_fit(10_000, n, torch.device("cpu"), 0) for d, n in per_slot.items()}
    assert fit == {torch.bfloat16: 100, FP8: 200}


def test_writes_saturate_and_readers_get_the_model_dtype():
    """Outliers and infinities become +-448, not NaN (the clamp before the cast: torch 2.13's own cast saturates
    too, so here this checks the result, not which of the two did it; older torch casts >= 480 to NaN). SDPA's
    slices and gathered rows come back dequantized in the model's dtype; with `whole` the FP8 layer itself
    (the Triton kernel's input); compaction and shared-prefix copies move the stored bytes."""
    cache = SlotCache(2, 3, 9, 2, 4, torch.float32, torch.device("cpu"), FP8)
    assert cache.quantized and cache.compute_dtype is torch.float32 and cache.all_keys.element_size() == 1
    keys = torch.randn(2, 2, 3, 4)  # (rows, kv heads, tokens, dim)
    keys[0, 0, 0, :3] = torch.tensor([1000.0, -5e4, float("inf")])
    values = -keys
    rows, cols = torch.tensor([[0], [2]]), torch.tensor([[0, 1, 2], [3, 4, 5]])
    cache.bind(rows, cols, 0, 3, 6, gather=torch.tensor([0, 2]))
    k, v = cache.update(keys, values, 1)
    assert k.dtype == v.dtype == torch.float32 and k.shape == (2, 2, 6, 4)
    assert not torch.isnan(cache.all_keys[1].float()).any()
    assert k[0, 0, 0, :3].tolist() == [448.0, -448.0, 448.0] and v[0, 0, 0, :3].tolist() == [-448.0, 448.0, -448.0]
    torch.testing.assert_close(k[0, :, :3], quantize(keys[0]).float(), rtol=0, atol=0)
    torch.testing.assert_close(k[1, :, 3:6], quantize(keys[1]).float(), rtol=0, atol=0)
    assert torch.all(cache.keys[0] == 0)  # layer 0 untouched
    cache.bind(rows, cols, 0, 3, 6, whole=True)
    whole_k, _ = cache.update(keys, values, 1)
    assert whole_k.dtype == FP8 and whole_k.data_ptr() == cache.keys[1].data_ptr()
    cache.move([2], [1], [6])
    assert torch.equal(cache.all_keys[:, 1].view(torch.uint8), cache.all_keys[:, 2].view(torch.uint8))
    prefix = torch.randn(2, 2, 5, 4)
    cache.write_prefix(torch.tensor([0, 1]), prefix, -prefix)
    for slot in (0, 1):
        torch.testing.assert_close(cache.all_keys[:, slot, :, :5].float(), quantize(prefix).float(), rtol=0, atol=0)


def test_the_default_cache_hands_attention_views_of_itself():
    """Unquantized (the default), `update` still returns slices of the cache, no copy."""
    cache = SlotCache(1, 2, 9, 2, 4, torch.float32, torch.device("cpu"))
    assert not cache.quantized and cache.all_keys.dtype is torch.float32
    cache.bind(torch.tensor([[0], [1]]), torch.tensor([[3], [3]]), 0, 2, 4)
    k, _ = cache.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4), 0)
    assert k.data_ptr() == cache.keys[0].data_ptr() and k.shape == (2, 2, 4, 4)


@pytest.mark.parametrize("fixture", ["neox", "llama"])  # multi-head; grouped-query
def test_fp8_logits_stay_close_to_the_unquantized_cache(fixture, request):
    """A prefill of two left-padded prompts, then a decode step, through the slot cache in fp32 and in FP8:
    logits within 3% (relative to their spread; measured 0.7-1.1%). Values read as zeros would be ~50%."""
    from tunebench.evaluate.generation import cache_argument, returned_cache
    from tunebench.serve.kvcache import kv_geometry, visible_mask

    served = request.getfixturevalue(fixture)
    model = served.model
    ids = [served.tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    width = max(map(len, ids))
    pads = [width - len(p) for p in ids]
    tokens = torch.tensor([[0] * n + p for n, p in zip(pads, ids, strict=True)])
    positions = torch.tensor([[0] * n + list(range(len(p))) for n, p in zip(pads, ids, strict=True)])
    with torch.inference_mode():
        probe = model(input_ids=tokens[:1, -1:], use_cache=True)
    layers, heads, dim, dtype = kv_geometry(returned_cache(probe))
    arg = cache_argument(model)

    def logits(storage):
        cache = SlotCache(layers, 2, 64, heads, dim, dtype, model.device, storage)
        cols = torch.tensor([[cache.scratch] * n + list(range(len(p))) for n, p in zip(pads, ids, strict=True)])
        lengths = torch.tensor([len(p) for p in ids])
        with torch.inference_mode():
            cache.bind(torch.arange(2)[:, None], cols, 0, 2, width)
            first = model(input_ids=tokens, position_ids=positions, attention_mask=visible_mask(positions, width),
                          logits_to_keep=1, use_cache=True, **{arg: cache}).logits[:, -1]
            cache.bind(torch.arange(2)[:, None], lengths[:, None], 0, 2, width + 1)
            second = model(input_ids=torch.tensor([[7], [9]]), position_ids=lengths[:, None], use_cache=True,
                           logits_to_keep=1, attention_mask=visible_mask(lengths[:, None], width + 1),
                           **{arg: cache}).logits[:, -1]
        return torch.stack([first, second])

    full, fp8 = logits(None), logits(FP8)
    spread = (full - full.mean(-1, keepdim=True)).norm(dim=-1)
    relative = (fp8 - full).norm(dim=-1) / spread
    assert 0 < relative.max() < 0.03


@pytest.mark.parametrize("attention", ["sdpa", "flex"])
def test_the_fp8_engine_equals_fp8_rounded_keys_and_values(neox, monkeypatch, attention):
    """Prefill, decode, joins, leaves and compaction over the FP8 cache give exactly the emulation's tokens and
    log-probabilities. Against the unquantized cache, the greedy log-probability (the largest one: continuous in
    the logits, so comparable even where a near-tie picks another token) is within 0.01 at every step whose
    context both runs share (measured: 0.002). Tiny random models are near-uniform, so the tokens themselves
    part ways after a near-tie; the logits test above is the closeness check."""
    fp8 = engine_run(neox, monkeypatch, "fp8", attention)
    plain = engine_run(neox, monkeypatch, "auto", attention)
    rounded_through_fp8(monkeypatch)
    emulated = engine_run(neox, monkeypatch, "auto", attention)
    assert_same(fp8, emulated)
    assert fp8 != plain  # the quantization shows
    for ids, logprobs, plain_ids, plain_logprobs in zip(*fp8, *plain, strict=True):
        shared = next((i for i, (a, b) in enumerate(zip(ids, plain_ids, strict=True)) if a != b), len(ids)) + 1
        assert logprobs[:shared] == pytest.approx(plain_logprobs[:shared], abs=0.01)


def test_the_triton_kernel_reads_fp8_in_the_engine(neox, monkeypatch):
    """The Triton kernel (interpreter) is handed the FP8 layer cache and gives the FP8 SDPA path's tokens
    (which equal the emulation's, above) with log-probabilities within 1e-4, as the bf16 kernel does SDPA's."""
    import tunebench.serve.triton_decode as td

    seen, kernel = [], td.decode_attention
    monkeypatch.setattr(td, "decode_attention", lambda q, k, v, n, s: (seen.append(k.dtype), kernel(q, k, v, n, s))[1])
    triton = engine_run(neox, monkeypatch, "fp8", "triton", new_tokens=8)
    assert seen and set(seen) == {FP8}
    assert_same(triton, engine_run(neox, monkeypatch, "fp8", "sdpa", new_tokens=8), abs_tol=1e-4)


def test_a_shared_prefix_is_quantized_into_the_slots(llama, monkeypatch):
    """Offline prompts that share a beginning start from its cached keys and values (`CachedPrefix`): copied
    into an FP8 cache they are quantized, and the prefill over them reads them dequantized."""
    from tunebench.evaluate.generation import returned_cache

    model, tok = llama.model, llama.tokenizer
    shared = tok("Summarize the dialogue in one sentence. Dialogue: Anna: are we still on for lunch? Ben: yes, "
                 "12:30 at the usual place.")["input_ids"]
    texts = [tok.decode(shared) + t for t in (" Summary:", " Class:", " Answer: the")]
    assert all(tok(t)["input_ids"][:len(shared)] == shared for t in texts)
    with torch.inference_mode():
        prefix = cached_prefix(shared, returned_cache(model(input_ids=torch.tensor([shared]), use_cache=True)))
    copies = []
    write = SlotCache.write_prefix
    monkeypatch.setattr(SlotCache, "write_prefix", lambda self, *a: (copies.append(self.quantized), write(self, *a)))
    fp8 = engine_run(llama, monkeypatch, "fp8", prefix=prefix, texts=texts, new_tokens=8)
    assert copies and all(copies)
    rounded_through_fp8(monkeypatch)
    assert_same(fp8, engine_run(llama, monkeypatch, "auto", prefix=prefix, texts=texts, new_tokens=8))


def test_the_fp8_kernel_matches_sdpa_over_the_dequantized_cache(monkeypatch):
    """The Triton kernel on float8_e4m3fn keys and values: SDPA over the same values dequantized to fp32, on
    ragged rows crossing tiles, grouped-query heads, a head size that is not a power of two."""
    pytest.importorskip("triton")
    from tunebench.serve.triton_decode import decode_attention

    monkeypatch.delenv("TUNEBENCH_TRITON_DECODE", raising=False)
    torch.manual_seed(0)
    slots, heads, kv_heads, columns, dim = 4, 4, 2, 75, 20
    keys, values = (quantize(t) for t in torch.randn(2, slots, kv_heads, columns, dim).unbind(0))
    query = torch.randn(3, 1, heads, dim).transpose(1, 2)
    lengths = torch.tensor([1, 33, columns], dtype=torch.int32)
    out = decode_attention(query, keys, values, lengths, dim ** -0.5)
    assert out.dtype == torch.float32
    for row, length in enumerate(lengths.tolist()):
        k, v = (t[row, :, :length].float().repeat_interleave(heads // kv_heads, 0)[None] for t in (keys, values))
        expected = torch.nn.functional.scaled_dot_product_attention(query[row:row + 1], k, v)
        torch.testing.assert_close(out[row:row + 1], expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_compiled_decode_step_writes_and_reads_fp8_as_eager_does(neox, monkeypatch):
    """TUNEBENCH_DECODE_COMPILE=model traces the whole step, the FP8 write included ("layers" runs the write
    eagerly, as without FP8): the eager FP8 tokens."""
    monkeypatch.setenv("TUNEBENCH_DECODE_COMPILE_BACKEND", "aot_eager")
    eager = engine_run(neox, monkeypatch, "fp8", new_tokens=8)
    torch._dynamo.reset()
    monkeypatch.setenv("TUNEBENCH_DECODE_COMPILE", "model")
    monkeypatch.setenv("TUNEBENCH_PREFILL_COMPILE", "0")
    engines: list = []
    compiled = engine_run(neox, monkeypatch, "fp8", new_tokens=8, engines=engines)
    compiler = engines[0].runner.compiler
    assert compiler.mode == "model" and compiler.errors == {} and compiler.calls.get("decode", 0) > 0
    assert_same(compiled, eager)
