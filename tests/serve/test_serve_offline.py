"""The batched engine offline (`tunebench.serve.offline`) with the GPU's shape buckets, run on the CPU:
prefill groups are cut to powers of two (a group of n prompts runs as the next power of two of rows), and
the bucketed shapes change no greedy token."""

from __future__ import annotations

from tunebench.serve.offline import offline_engine, run_offline
from tunebench.serve.requests import GenerationRequest
from tunebench.serve.sampling import SamplingParams

TEXTS = ["The engine makes a rattling noise", "Plant the tomato seedlings", "Anna: are we still on for lunch?",
         "Solder the resistor to the board", "The rocket reached orbit", "Simmer the onions in butter",
         "Our pitcher threw a no-hitter", "The city council voted"]


def run(model, tok, bucketed: bool, budget: int) -> tuple[list[list[int]], list[int]]:
    engine = offline_engine(model, tok, longest=64, slots=8, prefill_budget=budget)
    engine.runner.bucketed = bucketed  # the GPU's shape buckets, here on the CPU
    groups: list[int] = []
    prefill = engine._prefill
    engine._prefill = lambda seqs: (groups.append(len(seqs)), prefill(seqs))[1]
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=6, ignore_eos=True))
                for t in TEXTS]
    return [[t.id for t in c.tokens] for c in run_offline(engine, requests)], groups


def test_bucketed_prefill_pads_groups_to_row_buckets_and_changes_no_token(tiny_llama_dir, load_tiny, monkeypatch):
    monkeypatch.setattr("tunebench.serve.graphs.PREFILL_ROW_STEP", 4)  # rows: 1, 2, 4, then multiples of 4
    model, tok = load_tiny(tiny_llama_dir)
    longest = max(len(tok(t)["input_ids"]) for t in TEXTS)
    exact, exact_groups = run(model, tok, bucketed=False, budget=6 * longest)
    bucketed, groups = run(model, tok, bucketed=True, budget=6 * longest)
    assert bucketed == exact
    assert exact_groups[0] == 6  # what the budget allows
    assert groups == exact_groups  # not cut to the buckets: padding rows instead (6 prompts run as 8 rows)
    runner = offline_engine(model, tok, longest=64, slots=8).runner
    runner.bucketed = True
    assert [runner.prefill_shape(n, 10)[0] for n in (1, 3, 4, 5, 6, 9)] == [1, 4, 4, 8, 8, 12]
    # Compiled prefills never run 1 row (torch.compile would specialize it and compile again per width).
    from tunebench.serve.compiled import DecodeCompiler

    runner.compile_prefill, runner.compiler = True, DecodeCompiler(model, runner.cache, "layers", "aot_eager")
    assert [runner.prefill_shape(n, 10)[0] for n in (1, 2, 3, 9)] == [2, 2, 4, 12]


def test_offline_runs_leave_the_heap_out_of_garbage_collection(tiny_llama_dir, load_tiny):
    """During a run the objects that existed before it (model, compiled code) are frozen, so a collection does
    not walk them (a full one stalled a burst ~0.5 s on the H200); afterwards they are collectable again."""
    import gc

    model, tok = load_tiny(tiny_llama_dir)
    engine = offline_engine(model, tok, longest=64, slots=4)
    seen: list[int] = []
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=3, ignore_eos=True))
                for t in TEXTS[:4]]
    assert gc.get_freeze_count() == 0
    run_offline(engine, requests, on_finished=lambda n: seen.append(gc.get_freeze_count()))
    assert seen and all(count > 0 for count in seen)
    assert gc.get_freeze_count() == 0


def test_heap_frozen_keeps_a_heap_the_process_froze_itself():
    import gc

    import tunebench.serve.engine_base as engine_base

    try:
        assert engine_base.freeze_heap() > 0
        frozen = gc.get_freeze_count()
        with engine_base.heap_frozen():
            pass
        assert gc.get_freeze_count() >= frozen  # a served process's freeze is not undone by an offline run
    finally:
        engine_base._heap_frozen_for_good = False
        gc.unfreeze()


def test_prefill_launches_are_counted_in_the_metrics(tiny_llama_dir, load_tiny):
    """/metrics' prefill histogram (prompts per launch) matches the launches the engine made."""
    from tunebench.serve.metrics import parse_metrics

    model, tok = load_tiny(tiny_llama_dir)
    longest = max(len(tok(t)["input_ids"]) for t in TEXTS)
    engine = offline_engine(model, tok, longest=64, slots=8, prefill_budget=3 * longest)
    groups: list[int] = []
    prefill = engine._prefill
    engine._prefill = lambda seqs: (groups.append(len(seqs)), prefill(seqs))[1]
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=4, ignore_eos=True))
                for t in TEXTS]
    engine.profile.every = 1e9  # no 10 s report (it resets the profile) inside the run
    run_offline(engine, requests)
    samples = parse_metrics(engine.metrics.render()[0].decode())
    assert len(groups) > 1 and sum(groups) == len(TEXTS)
    assert samples["tunebench_prefill_size_count"] == len(groups)
    assert samples["tunebench_prefill_size_sum"] == len(TEXTS)
    from tunebench.serve.metrics import ENGINE_PHASES

    spent = {phase: samples[f'tunebench_engine_seconds_total{{phase="{phase}"}}'] for phase in ENGINE_PHASES}
    assert spent["prefill"] > 0 and spent["launch"] > 0  # on the CPU, the passes themselves
    assert abs(sum(spent.values()) - engine.profile.iteration_s) < 1e-6  # the phases add up to the iterations


def schedule(model, tok, ratio: float, slots: int = 8) -> tuple[list[list[int]], list[str]]:
    """Greedy tokens of TEXTS and the engine's launches in order ("p3": a prefill of 3 prompts, "s5": a decode
    step of 5 rows), prefills of 2 prompts at most."""
    import dataclasses

    longest = max(len(tok(t)["input_ids"]) for t in TEXTS)
    engine = offline_engine(model, tok, longest=64, slots=slots, prefill_budget=2 * longest)
    engine.limits = dataclasses.replace(engine.limits, waiting_served_ratio=ratio, prefill_delay=0.0)
    launches: list[str] = []
    prefill, step = engine._prefill, engine.step
    engine._prefill = lambda seqs: (launches.append(f"p{len(seqs)}"), prefill(seqs))[1]
    engine.step = lambda: (launches.append(f"s{len(engine.batch)}"), step())[1]
    requests = [GenerationRequest(tok(t)["input_ids"], SamplingParams(max_new_tokens=5, ignore_eos=True))
                for t in TEXTS]
    return [[t.id for t in c.tokens] for c in run_offline(engine, requests)], launches


def test_waiting_served_ratio_prefills_a_backlog_before_decoding_and_changes_no_token(tiny_llama_dir, load_tiny):
    """TGI's waiting_served_ratio: after a prefill, more run before the next decode step while waiting >=
    ratio x running. At 0 every free slot fills first, so the 8 prompts decode as one batch; at inf (the
    served default) one prefill per iteration staggers them (each later group joins a step later and leaves
    a step later); at 1, prefills run back to back until the running catch up with the waiting."""
    model, tok = load_tiny(tiny_llama_dir)
    staggered, one_each = schedule(model, tok, float("inf"))
    first, filled = schedule(model, tok, 0.0)
    half, balanced = schedule(model, tok, 1.0)
    assert first == staggered == half
    assert one_each[:8] == ["p2", "s2", "p2", "s4", "p2", "s6", "p2", "s8"]
    assert filled[:4] == ["p2"] * 4 and set(filled[4:]) == {"s8"}  # (a step may launch before a finish is read)
    steps = [len([x for x in launches if x.startswith("s")]) for launches in (one_each, balanced, filled)]
    assert steps[0] > steps[1] > steps[2]
    assert balanced[:4] == ["p2", "p2", "p2", "s6"]  # 6 waiting >= 2 running, 4 >= 4, then 2 < 6
    # With fewer slots than prompts the ratio fills the free slots only.
    _tokens, small = schedule(model, tok, 0.0, slots=4)
    assert small[:3] == ["p2", "p2", "s4"]
