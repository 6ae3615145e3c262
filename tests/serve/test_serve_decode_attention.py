"""Decode attention through FlexAttention with a per-row block mask (`tunebench.serve.decode_attention`),
run on the CPU with torch's unfused FlexAttention: the same greedy tokens as padded `model.generate` in fp32
(multi-head and grouped-query models), the block counts each row reads, and the model's attention
implementation left as it was."""

from __future__ import annotations

import pytest
import torch

from tunebench.evaluate.generation import generate
from tunebench.serve.decode_attention import KV_BLOCK, NAME, DecodeAttention
from tunebench.serve.offline import offline_engine, run_offline
from tunebench.serve.requests import GenerationRequest
from tunebench.serve.sampling import SamplingParams

TEXTS = ["The engine makes a rattling noise", "Plant the tomato seedlings", "Anna: are we still on for lunch?",
         "Solder the resistor to the board", "The rocket reached orbit", "Simmer the onions in butter"]


def engine_tokens(model, tok, attention: str, monkeypatch, new_tokens: int = 40, min_rows: int = 0):
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", attention)
    monkeypatch.setenv("TUNEBENCH_FLEX_MIN_ROWS", str(min_rows))  # 0: FlexAttention at every step, 1 row too
    engine = offline_engine(model, tok, longest=64, slots=4)  # 6 prompts, 4 slots: rows join and leave
    assert engine.runner.flex == (attention != "sdpa")
    if attention != "sdpa":
        assert engine.runner.decode_attention.kernel == attention
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
                for t in TEXTS]
    completions = run_offline(engine, requests)
    assert engine.runner.flex_error is None
    return [[t.id for t in c.tokens] for c in completions], [[t.logprob for t in c.tokens] for c in completions]


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir"])
def test_flex_decode_gives_the_greedy_tokens_of_sdpa_and_of_padded_generate(fixture, request, load_tiny,
                                                                           monkeypatch):
    model, tok = load_tiny(request.getfixturevalue(fixture))
    flex, flex_logprobs = engine_tokens(model, tok, "flex", monkeypatch)  # 40 new tokens: rows cross a block
    sdpa, sdpa_logprobs = engine_tokens(model, tok, "sdpa", monkeypatch)
    assert flex == sdpa
    for a, b in zip(flex_logprobs, sdpa_logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    padded = generate(model, tok, TEXTS, max_new_tokens=40, batch_size=3, engine="padded")
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", "flex")
    through_eval = generate(model, tok, TEXTS, max_new_tokens=40, batch_size=3, engine="batched")
    assert through_eval == padded
    assert model.config._attn_implementation != NAME  # the scope put it back


def test_triton_decode_kernel_gives_the_greedy_tokens_of_sdpa(tiny_neox_dir, load_tiny, monkeypatch):
    """The hand-written kernel (`tunebench.serve.triton_decode`) in Triton's interpreter on the CPU, in the
    engine on the 3B's architecture (GPT-NeoX, multi-head): the same tokens as SDPA over the width bucket and
    log-probabilities within 1e-4, as rows join and leave, at every step size down to one row. (Grouped-query
    heads and rows that cross tiles: the kernel test below; the interpreter is slow, so few tokens here.)"""
    pytest.importorskip("triton")
    model, tok = load_tiny(tiny_neox_dir)
    triton, triton_logprobs = engine_tokens(model, tok, "triton", monkeypatch, new_tokens=10, min_rows=1)
    sdpa, sdpa_logprobs = engine_tokens(model, tok, "sdpa", monkeypatch, new_tokens=10)
    assert triton == sdpa
    for a, b in zip(triton_logprobs, sdpa_logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize(("variant", "dim"), [("lanes:32:2", 20), ("tiles:64:4", 20), ("lanes:16:1", 20),
                                            ("split:32:2", 20), ("split:16:1", 24), ("split:32:2", 28),
                                            ("split:32:2", 16), ("ahead:16:1", 20), ("ahead:4:1", 28),
                                            ("ahead:8:1:3", 16), ("split:16:1:2", 24)])
def test_triton_kernel_matches_sdpa_on_ragged_rows_and_strided_queries(variant, dim, monkeypatch):
    """Head sizes: 20 = 16 + 4 and 24 = 16 + 8 (split in two parts, as the 3B's 80 = 64 + 16), 28 (no such
    split: padded to 32), 16 (a power of two: one part)."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TUNEBENCH_TRITON_DECODE", variant)
    from tunebench.serve.triton_decode import decode_attention

    tile = 64  # the lengths below cross tiles of 16, 32 or 64 tokens
    torch.manual_seed(0)
    slots, heads, kv_heads, columns = 5, 4, 2, 2 * tile + 9
    keys, values = torch.randn(2, slots, kv_heads, columns, dim).unbind(0)
    query = torch.randn(4, 1, heads, dim).transpose(1, 2)  # (rows, heads, 1, dim), as transformers hands it
    lengths = torch.tensor([1, tile, tile + 1, columns], dtype=torch.int32)
    out = decode_attention(query, keys, values, lengths, dim ** -0.5)
    assert out.shape == (4, 1, heads, dim)
    for row, length in enumerate(lengths.tolist()):
        k, v = (t[row, :, :length].repeat_interleave(heads // kv_heads, 0)[None] for t in (keys, values))
        expected = torch.nn.functional.scaled_dot_product_attention(query[row:row + 1], k, v)
        torch.testing.assert_close(out[row:row + 1], expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_the_default_variant_follows_the_rows_and_the_setting_overrides_it(monkeypatch):
    """Without TUNEBENCH_TRITON_DECODE a lone sequence gets "split" at 16-token tiles and a batch of 64 rows or
    more "ahead" at 8 (what measured fastest for each on the H200); the setting applies to every row count."""
    from tunebench.serve.triton_decode import variant

    monkeypatch.delenv("TUNEBENCH_TRITON_DECODE", raising=False)
    assert variant(1) == variant(63) == ("split", 16, 1, 0)
    assert variant(64) == variant(512) == ("ahead", 8, 2, 0)
    monkeypatch.setenv("TUNEBENCH_TRITON_DECODE", "lanes:32:2")
    assert variant(1) == variant(512) == ("lanes", 32, 2, 0)


def test_the_default_kernel_of_a_large_step_matches_sdpa(monkeypatch):
    """A 64-row step with no setting runs the default large-batch variant ("ahead" at 8-token tiles, 2 warps)
    over the 3B's head split (80 = 64 + 16, scaled down: 20 = 16 + 4), on ragged rows crossing tiles."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TUNEBENCH_TRITON_DECODE", raising=False)
    from tunebench.serve.triton_decode import decode_attention

    torch.manual_seed(0)
    rows, heads, dim, columns = 64, 2, 20, 19
    keys, values = torch.randn(2, rows, heads, columns, dim).unbind(0)
    query = torch.randn(rows, 1, heads, dim).transpose(1, 2)
    lengths = torch.randint(1, columns + 1, (rows,), dtype=torch.int32)
    out = decode_attention(query, keys, values, lengths, dim ** -0.5)
    for row, length in enumerate(lengths.tolist()):
        expected = torch.nn.functional.scaled_dot_product_attention(
            query[row:row + 1], keys[row:row + 1, :, :length], values[row:row + 1, :, :length])
        torch.testing.assert_close(out[row:row + 1], expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_head_sizes_split_into_two_powers_of_two_or_pad():
    from tunebench.serve.triton_decode import head_split

    assert head_split(80) == (64, 16)
    assert head_split(128) == (128, 0)
    assert head_split(96) == (64, 32)
    assert head_split(112) == (128, 0)  # 64 + 48: padded instead


def test_a_malformed_triton_variant_is_refused_when_the_engine_is_built(tiny_llama_dir, load_tiny, monkeypatch):
    from tunebench.errors import SettingError

    model, tok = load_tiny(tiny_llama_dir)
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", "triton")
    monkeypatch.setenv("TUNEBENCH_TRITON_DECODE", "fast:16:1")
    with pytest.raises(SettingError, match="KERNEL one of tiles, lanes, split, ahead"):
        offline_engine(model, tok, longest=16, slots=1)


def test_a_malformed_triton_variant_is_refused_with_the_allowed_form(monkeypatch):
    from tunebench.serve.triton_decode import variant

    for raw in ("fast", "split:16", "split:12:1", "split:16:1:2:4", "split:16:0", "split:16:1:-1"):
        monkeypatch.setenv("TUNEBENCH_TRITON_DECODE", raw)
        with pytest.raises(ValueError, match="KERNEL:TILE:WARPS"):
            variant()
    monkeypatch.setenv("TUNEBENCH_TRITON_DECODE", "ahead:16:1:3")
    assert variant() == ("ahead", 16, 1, 3)


def test_without_triton_the_engine_falls_back_to_flex(tiny_llama_dir, load_tiny, monkeypatch):
    import tunebench.serve.triton_decode as td

    monkeypatch.setattr(td, "available", lambda: "triton is not installed")
    model, tok = load_tiny(tiny_llama_dir)
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", "triton")
    engine = offline_engine(model, tok, longest=16, slots=1)
    assert engine.runner.decode_attention.kernel == "flex"
    assert "triton is not installed" in engine.runner.flex_error


def test_small_steps_under_the_row_threshold_decode_with_sdpa_and_change_no_token(tiny_neox_dir, load_tiny,
                                                                                  monkeypatch):
    model, tok = load_tiny(tiny_neox_dir)
    sdpa, _ = engine_tokens(model, tok, "sdpa", monkeypatch, new_tokens=12)
    calls = []  # below: 4 slots, 6 prompts, steps of 4, 3, 2 and 1 rows, fewer than 3 through SDPA
    original = DecodeAttention.mask
    monkeypatch.setattr(DecodeAttention, "mask", lambda self, rows: (calls.append(rows), original(self, rows))[1])
    mixed, _ = engine_tokens(model, tok, "flex", monkeypatch, new_tokens=12, min_rows=3)
    assert mixed == sdpa
    assert calls and min(calls) >= 3


def test_block_mask_gives_each_running_row_its_own_blocks_and_idle_slots_none():
    positions = torch.tensor([0, KV_BLOCK - 1, KV_BLOCK, 3 * KV_BLOCK + 5, 7, 9])
    attention = DecodeAttention(torch.nn.Module(), positions, columns=4 * KV_BLOCK + 1)
    mask = attention.mask(rows=4)
    assert mask.kv_num_blocks[:, 0, 0].tolist() == [1, 1, 2, 4, 0, 0]
    dense = mask.to_dense()[:, 0, 0]  # block-level: which blocks each slot may read
    assert dense.sum(-1).tolist() == [1, 1, 2, 4, 0, 0]
    seen = torch.arange(4 * KV_BLOCK + 1)
    assert [bool(attention.mask_mod(torch.tensor(3), 0, 0, seen[c])) for c in (3 * KV_BLOCK + 5,
                                                                                 3 * KV_BLOCK + 6)] == [True, False]


def test_an_unknown_decode_attention_is_refused(tiny_llama_dir, load_tiny, monkeypatch):
    model, tok = load_tiny(tiny_llama_dir)
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", "paged")
    with pytest.raises(ValueError, match="allowed: triton, flex, sdpa"):
        offline_engine(model, tok, longest=16, slots=1)


def test_warm_up_runs_every_decode_bucket_and_leaves_generation_unchanged(tiny_neox_dir, load_tiny, monkeypatch):
    """`BatchedEngine.warm_up` (served engines on CUDA) runs a decode step per batch bucket and three prefills
    before the first request. Graphs cannot be captured on the CPU, so each "replay" here runs the step
    eagerly and records its shape: every bucket is covered, and tokens generated afterwards are the ones of
    an engine that was never warmed (the warm-up's writes stay in scratch columns and idle rows)."""
    model, tok = load_tiny(tiny_neox_dir)
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=12, ignore_eos=True))
                for t in TEXTS]
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", "flex")
    monkeypatch.setenv("TUNEBENCH_FLEX_MIN_ROWS", "0")
    cold = [[t.id for t in c.tokens] for c in run_offline(offline_engine(model, tok, longest=64, slots=4), requests)]

    engine = offline_engine(model, tok, longest=64, slots=4)
    runner, ran = engine.runner, []
    runner._offline = False  # served bucketing (the setter would also swap the compiler: not wanted here)
    runner.use_graphs = True

    def replay(kind, forward, rows, width, adapter, extra):
        ran.append((kind, rows))
        return forward(rows, width, extra)

    monkeypatch.setattr(runner, "_replay", replay)  # prefills come through it too, as kind "prefill"
    engine.warm_up()
    decoded = {rows for kind, rows in ran if kind == "decode-flex"}
    assert decoded == {runner.batch_bucket(n) for n in range(1, engine.slots + 1)} == {1, 2, 4}
    assert [rows for kind, rows in ran if kind == "prefill"] == [1, 4, 4]  # 1, 8 and 16 prompts, 4 slots
    runner.use_graphs, runner._offline = False, True
    monkeypatch.undo()
    warm = [[t.id for t in c.tokens] for c in run_offline(engine, requests)]
    assert warm == cold


def test_warm_up_covers_every_loaded_adapter(tiny_llama_dir, lora_adapters, monkeypatch):
    """With unmerged adapters, every one (and the base weights) gets its decode buckets and prefill shapes in
    the warm-up, not only the default: another adapter's first requests compiled and captured inside a burst."""
    from tunebench.serve.engine import EngineLimits, create_engine
    from tunebench.serve.loading import load_served
    from tunebench.serve.metrics import ServeMetrics
    from tunebench.serve.options import AdapterSpec, ModelOptions

    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", "flex")
    monkeypatch.setenv("TUNEBENCH_FLEX_MIN_ROWS", "0")
    served = load_served(ModelOptions(model=str(tiny_llama_dir),
                                      adapters=tuple(AdapterSpec(n, p) for n, p in lora_adapters.items())))
    engine = create_engine("batched", served, EngineLimits(max_batch=2, max_sequence_tokens=48),
                           ServeMetrics("batched"))
    runner, ran = engine.runner, []
    runner.use_graphs = True
    monkeypatch.setattr(runner, "_replay", lambda kind, forward, rows, width, adapter, extra: (
        ran.append((kind, rows, adapter)), forward(rows, width, {"adapter_names": [adapter] * rows}))[1])
    engine.warm_up()
    for adapter in ("__base__", "alpha", "beta"):
        assert {rows for kind, rows, a in ran if kind == "decode-flex" and a == adapter} == {1, 2}
        assert [rows for kind, rows, a in ran if kind == "prefill" and a == adapter]
