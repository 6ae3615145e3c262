"""The batched engine's slot KV cache: per-row positions, joining mid-flight, slot reuse and compaction."""

from __future__ import annotations

import asyncio

import pytest

PROMPTS = ["Simmer the onions", "The rocket reached orbit and deployed the satellite over the Pacific.",
           "Anna: lunch?", "Solder the resistor to the board and check the voltage before powering it on"]


def engine_for(served, max_batch=4):
    from tunebench.serve.engine import EngineLimits, create_engine
    from tunebench.serve.metrics import ServeMetrics

    return create_engine("batched", served, EngineLimits(max_batch=max_batch, max_sequence_tokens=96),
                         ServeMetrics("batched"))


def request(served, prompt, new_tokens):
    from tunebench.serve.engine import GenerationRequest
    from tunebench.serve.sampling import SamplingParams

    ids = served.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return GenerationRequest(ids, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))


async def run_schedule(engine, schedule):
    """schedule: (request, (i, n)): submit once request i has streamed n tokens (None: at once).
    Returns every request's [(token id, log-probability)], in order."""
    engine.start(asyncio.get_running_loop())
    streams: list[list] = []
    tasks = []
    try:
        for req, after in schedule:
            while after is not None and len(streams[after[0]]) < after[1]:
                await asyncio.sleep(0.001)
            streams.append([])
            tasks.append(asyncio.create_task(collect(engine.submit(req), streams[-1])))
        await asyncio.gather(*tasks)
    finally:
        await asyncio.to_thread(engine.stop)
    return [[(item.id, item.logprob) for item in stream[:-1]] for stream in streams]


async def collect(handle, into):
    async for item in handle:
        into.append(item)


def alone(served, req):
    return asyncio.run(run_schedule(engine_for(served), [(req, None)]))[0]


def assert_same_tokens(got, expected):
    """Same ids, and log-probabilities within float noise (the tiny random models repeat one token, so the
    log-probabilities are what shows a wrong cache)."""
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-4)


def test_rows_of_different_lengths_match_the_model_alone(neox):
    """Per-row positions and the 4-D mask: two prompts prefilled together (left-padded) and decoded together in
    the slot cache give each prompt's logits from a plain forward pass over its own tokens."""
    import torch

    from tunebench.evaluate.generation import cache_argument
    from tunebench.serve.kvcache import SlotCache, kv_geometry, visible_mask

    model = neox.model
    engine = engine_for(neox)
    layers, heads, dim, dtype = kv_geometry(engine.check_cache())
    cache = SlotCache(layers, 2, 33, heads, dim, dtype, model.device)
    prompts = [[5, 9, 14, 3, 22, 7, 8], [11, 4, 19]]
    width = max(map(len, prompts))
    pads = [width - len(p) for p in prompts]
    ids = torch.tensor([[0] * n + p for n, p in zip(pads, prompts, strict=True)])
    pos = torch.tensor([[0] * n + list(range(len(p))) for n, p in zip(pads, prompts, strict=True)])
    cols = torch.tensor([[cache.scratch] * n + list(range(len(p))) for n, p in zip(pads, prompts, strict=True)])
    arg = cache_argument(model)
    with torch.inference_mode():
        cache.bind(torch.arange(2)[:, None], cols, 0, 2, width)
        first = model(input_ids=ids, position_ids=pos, attention_mask=visible_mask(pos, width), logits_to_keep=1,
                      use_cache=True, **{arg: cache}).logits[:, -1]
        nxt = first.argmax(-1)
        lengths = torch.tensor([len(p) for p in prompts])
        cache.bind(torch.arange(2)[:, None], lengths[:, None], 0, 2, width + 1)
        second = model(input_ids=nxt[:, None], position_ids=lengths[:, None], use_cache=True, logits_to_keep=1,
                       attention_mask=visible_mask(lengths[:, None], width + 1), **{arg: cache}).logits[:, -1]
        for row, prompt in enumerate(prompts):
            full = torch.tensor([[*prompt, int(nxt[row])]])
            reference = model(input_ids=full).logits[0]
            torch.testing.assert_close(first[row], reference[-2], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(second[row], reference[-1], atol=1e-4, rtol=1e-4)


def test_a_sequence_joining_mid_flight_gives_the_tokens_it_gets_alone(llama):
    long_req, late_req = request(llama, PROMPTS[1], 30), request(llama, PROMPTS[0], 12)
    together = asyncio.run(run_schedule(engine_for(llama), [(long_req, None), (late_req, (0, 10))]))
    assert_same_tokens(together[0], alone(llama, long_req))
    assert_same_tokens(together[1], alone(llama, late_req))


def test_a_freed_slot_is_reused_and_the_batch_stays_compact(llama):
    """Short sequences leave, the tail rows move into their slots, newcomers take the freed ones: every
    sequence still gets exactly its solo tokens."""
    reqs = [request(llama, PROMPTS[2], 3), request(llama, PROMPTS[1], 40), request(llama, PROMPTS[3], 30),
            request(llama, PROMPTS[0], 20), request(llama, PROMPTS[2], 6), request(llama, PROMPTS[0], 9)]
    engine = engine_for(llama, max_batch=3)
    # The first leaves after 3 tokens and the third (the tail row) moves into its slot for 27 more steps.
    schedule = [(reqs[0], None), (reqs[1], None), (reqs[2], None), (reqs[3], (1, 8)), (reqs[4], (1, 15)),
                (reqs[5], (1, 16))]
    together = asyncio.run(run_schedule(engine, schedule))
    for req, tokens in zip(reqs, together, strict=True):
        assert_same_tokens(tokens, alone(llama, req))
    assert engine.metrics._max_batch == 3
    assert len(engine.batch) == 0


def test_compaction_moves_the_tail_rows_into_the_holes():
    """Keys, values and each row's next input (token, position, write column) move together; the rows left
    behind are idle again (token 0 at position 0 into the scratch column)."""
    from types import SimpleNamespace

    import torch

    from tunebench.serve.engine import SlotBatch
    from tunebench.serve.graphs import DecodeRunner
    from tunebench.serve.kvcache import SlotCache

    cache = SlotCache(2, 4, 9, 1, 2, torch.float32, torch.device("cpu"))
    for layer in range(2):
        for slot in range(4):
            cache.keys[layer][slot] = slot + 10 * layer
            cache.values[layer][slot] = -(slot + 10 * layer)
    runner = DecodeRunner(SimpleNamespace(config=SimpleNamespace()), cache, "past_key_values", use_graphs=False)
    batch = SlotBatch(runner)
    for slot in range(4):
        batch.add(f"seq{slot}", 3 + slot)  # type: ignore[arg-type]
    runner.start_rows(0, [3, 4, 5, 6], [100, 101, 102, 103])
    batch.keep([0, 2, 3])  # seq1 leaves: seq3 (the tail) moves into slot 1
    assert batch.seqs == ["seq0", "seq3", "seq2"] and batch.lengths == [3, 6, 5]
    assert runner.inputs.tolist() == [[100, 103, 102, 0], [3, 6, 5, 0], [3, 6, 5, cache.scratch]]
    for layer in range(2):
        assert torch.all(cache.keys[layer][1, :, :6] == 3 + 10 * layer)
        assert torch.all(cache.values[layer][1, :, :6] == -(3 + 10 * layer))
    batch.keep([1])
    assert batch.seqs == ["seq3"] and torch.all(cache.keys[0][0, :, :6] == 3)
    assert runner.inputs[:, 0].tolist() == [103, 6, 6] and runner.inputs[2, 1:].tolist() == [cache.scratch] * 3


def test_decode_buckets_cover_every_row_and_column(llama):
    runner = engine_for(llama, max_batch=12).runner
    assert [runner.batch_bucket(n) for n in (1, 2, 3, 5, 9, 12)] == [1, 2, 4, 8, 12, 12]
    assert runner.width_bucket(5) == 32 and runner.width_bucket(33) == 64
    assert runner.width_bucket(96) == 96  # capped at what a slot holds
    runner.cache.slots = 256
    assert [runner.batch_bucket(n) for n in (31, 33, 64, 65, 145, 256)] == [32, 64, 64, 96, 160, 256]
    runner.cache.max_len = 1025
    assert [runner.width_bucket(n) for n in (129, 193, 300, 513, 1024)] == [192, 256, 320, 1024, 1024]


def test_the_next_step_is_launched_before_the_tokens_are_read(llama):
    """Greedy rows are read while the next step runs, so a finished sequence is found one step late: n tokens
    take n decode launches after the prefill (the last one's token is dropped). A sampling row is chosen on the
    host from each step's logits, so it is read at once and takes n - 1."""
    from tunebench.serve.engine import GenerationRequest
    from tunebench.serve.sampling import SamplingParams

    greedy = request(llama, PROMPTS[0], 5)
    engine = engine_for(llama)
    assert len(asyncio.run(run_schedule(engine, [(greedy, None)]))[0]) == 5
    assert engine.profile.steps == 5 and not engine._pending

    sampled = GenerationRequest(greedy.prompt_ids, SamplingParams(max_new_tokens=5, do_sample=True, seed=3,
                                                                  ignore_eos=True))
    engine = engine_for(llama)
    assert len(asyncio.run(run_schedule(engine, [(sampled, None)]))[0]) == 5
    assert engine.profile.steps == 4


def test_a_failing_step_fails_its_requests_and_the_engine_serves_on(llama):
    """An exception in a decode step (a bug, an out-of-memory) answers every running request with an internal
    error instead of leaving it hanging; the rows are reset and the next request decodes as if alone."""
    from tunebench.serve.engine import GenerationFailed

    engine = engine_for(llama)
    plain_step, calls = engine.runner.step, []

    def failing_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected")
        return plain_step(*args, **kwargs)

    engine.runner.step = failing_once
    reqs = [request(llama, PROMPTS[0], 6), request(llama, PROMPTS[1], 6)]

    async def go():
        engine.start(asyncio.get_running_loop())
        try:
            outcomes = []
            for handle in [engine.submit(r) for r in reqs]:
                try:
                    outcomes.append(await handle.result())
                except GenerationFailed as err:
                    outcomes.append(err.kind)
            after = await engine.submit(reqs[0]).result()
        finally:
            await asyncio.to_thread(engine.stop)
        return outcomes, after

    outcomes, after = asyncio.run(go())
    assert outcomes == ["internal", "internal"]
    assert_same_tokens([(t.id, t.logprob) for t in after.tokens], alone(llama, reqs[0]))
    assert engine.in_flight == 0


def test_the_triton_write_puts_every_token_where_the_indexed_write_does():
    """`tunebench.serve.triton_write` (in Triton's interpreter here) against PyTorch's indexed write: states
    strided as transformers hands them ((n, t, heads, dim) transposed), rows out of order, a bf16 cache."""
    pytest.importorskip("triton")
    import torch

    from tunebench.serve import triton_write

    torch.manual_seed(0)
    slots, heads, columns, dim, n, t = 5, 3, 12, 20, 3, 4
    keys, values = torch.randn(2, slots, heads, columns, dim).to(torch.bfloat16).unbind(0)
    states = [torch.randn(n, t, heads, dim).to(torch.bfloat16).transpose(1, 2) for _ in range(2)]
    rows = torch.tensor([4, 0, 2])[:, None]
    cols = torch.tensor([[0, 1, 2, 3], [7, 8, 9, 10], [11, 3, 4, 5]])
    expected_keys, expected_values = keys.clone(), values.clone()
    expected_keys[rows, :, cols] = states[0].transpose(1, 2)
    expected_values[rows, :, cols] = states[1].transpose(1, 2)
    assert triton_write.usable(keys, *states)
    triton_write.write(keys, values, *states, rows, cols)
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)


def test_the_engine_through_the_triton_write_gives_the_same_tokens(llama, monkeypatch):
    """The whole engine with the Triton write (prefills, decode steps, compaction): the same tokens and
    log-probabilities as with PyTorch's write; the kernel ran."""
    pytest.importorskip("triton")
    from tunebench.serve import triton_write

    calls = []
    write = triton_write.write
    monkeypatch.setattr(triton_write, "write", lambda *a: (calls.append(a[2].shape), write(*a)))
    reqs = [request(llama, p, 6) for p in PROMPTS[:3]]
    schedule = [(reqs[0], None), (reqs[1], None), (reqs[2], (0, 2))]
    plain = asyncio.run(run_schedule(engine_for(llama, max_batch=2), schedule))
    assert not calls  # the CPU default: PyTorch's write
    engine = engine_for(llama, max_batch=2)
    engine.cache.fast_write = True
    fast = asyncio.run(run_schedule(engine, schedule))
    assert {shape[2] for shape in calls} > {1}  # prefills (many tokens) and decode steps (one)
    for got, expected in zip(fast, plain, strict=True):
        assert_same_tokens(got, expected)


def test_a_bad_triton_write_setting_names_the_allowed_values(monkeypatch):
    from tunebench.errors import SettingError
    from tunebench.serve import triton_write

    triton_write.enabled.cache_clear()
    monkeypatch.setenv("TUNEBENCH_TRITON_KV_WRITE", "on")
    try:
        with pytest.raises(SettingError, match="allowed: 0"):
            triton_write.enabled()
    finally:
        triton_write.enabled.cache_clear()


def test_a_prefill_from_column_zero_attends_over_its_own_keys():
    """`fresh_mask` over the pass's own (left-padded) keys exposes exactly what `visible_mask` exposes through
    the slots' columns: the same attention output for every real token; a padding token sees only itself."""
    import torch
    import torch.nn.functional as F

    from tunebench.serve.kvcache import SlotCache, fresh_mask, visible_mask

    torch.manual_seed(0)
    cache = SlotCache(1, 3, 9, 2, 4, torch.float32, torch.device("cpu"))
    lengths, width = [5, 3], 5
    cols = torch.tensor([[cache.scratch] * (width - n) + list(range(n)) for n in lengths])
    positions = torch.where(cols == cache.scratch, 0, cols)
    keys, values, query = (torch.randn(2, 2, width, 4) for _ in range(3))
    slots = torch.tensor([2, 0])
    cache.bind(slots[:, None], cols, 0, 2, width, gather=slots)
    k, v = cache.update(keys, values, 0)
    through_slots = F.scaled_dot_product_attention(query, k, v, attn_mask=visible_mask(positions, width))
    cache.bind(slots[:, None], cols, 0, 2, width, gather=slots, fresh=True)
    k, v = cache.update(keys, values, 0)
    assert k is keys and v is values
    mask = fresh_mask(cols, cache.scratch)
    fresh = F.scaled_dot_product_attention(query, k, v, attn_mask=mask)
    real = cols != cache.scratch
    torch.testing.assert_close(fresh.transpose(1, 2)[real], through_slots.transpose(1, 2)[real])
    assert mask[1, 0, 0].tolist() == [True, False, False, False, False]  # padding: itself only
    # Over an FP8 cache the pass attends over its own unquantized keys; the slots hold them quantized.
    from tunebench.serve.kvcache import quantize

    fp8 = SlotCache(1, 3, 9, 2, 4, torch.float32, torch.device("cpu"), torch.float8_e4m3fn)
    fp8.bind(slots[:, None], cols, 0, 2, width, gather=slots, fresh=True)
    k, v = fp8.update(keys, values, 0)
    assert k is keys and v is values
    stored = fp8.keys[0][slots[:, None], :, cols]  # (rows, width, heads, dim), the scratch column included
    expected = quantize(keys.transpose(1, 2))
    assert torch.equal(stored[real].view(torch.uint8), expected[real].view(torch.uint8))
