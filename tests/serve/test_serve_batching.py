"""Proof that batching is real: shared decode steps, short requests overtaking long ones, identical greedy output."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from serve_helpers import LONG, start

PROMPTS = ["Simmer", "The rocket reached orbit and deployed the satellite over the Pacific.",
           "Anna: are we still on for lunch tomorrow?", "Solder the resistor to the board and check the voltage"]


async def generate_all(live, bodies):
    import httpx

    async with httpx.AsyncClient(base_url=live.url, headers=live.headers, timeout=120) as client:
        responses = await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    return [r.json() for r in responses]


def bodies(n_tokens=24):
    """Every prompt through the base model and both adapters, with different lengths to generate."""
    out = []
    for i, prompt in enumerate(PROMPTS):
        for j, adapter in enumerate((None, "alpha", "beta")):
            parameters = {"max_new_tokens": n_tokens + 5 * i + j, "details": True, "ignore_eos": j == 1}
            if adapter:
                parameters["adapter_id"] = adapter
            out.append({"inputs": prompt, "parameters": parameters})
    return out


def step_counts(live):
    samples = live.metrics()
    return samples["tunebench_batch_size_count"], samples['tunebench_batch_size_bucket{le="1.0"}']


def test_concurrent_requests_share_decode_steps(batched):
    steps_before, single_before = step_counts(batched)
    asyncio.run(generate_all(batched, bodies()))
    steps_after, single_after = step_counts(batched)
    multi = (steps_after - steps_before) - (single_after - single_before)
    assert multi > 0, "no decode step ran more than one sequence"
    assert batched.metrics()["tunebench_max_batch_size"] > 1


def test_naive_and_batched_give_identical_greedy_outputs(batched, naive):
    requests = bodies()
    concurrent = asyncio.run(generate_all(batched, requests))  # sharing batches, mixing adapters
    one_by_one = [naive.generate(b["inputs"], **b["parameters"]) for b in requests]
    for body, a, b in zip(requests, concurrent, one_by_one, strict=True):
        assert a["generated_text"] == b["generated_text"], body
        assert [t["id"] for t in a["details"]["tokens"]] == [t["id"] for t in b["details"]["tokens"]], body
        for x, y in zip(a["details"]["tokens"], b["details"]["tokens"], strict=True):
            assert x["logprob"] == pytest.approx(y["logprob"], abs=1e-4)


def test_served_text_equals_evaluation_generation(batched, tiny_llama_dir):
    """The engine's greedy text is what evaluation's generation path produces for the same prompts (the server's
    engine runs in its own process: the reference loads the same base weights here)."""
    from transformers import AutoModelForCausalLM

    from tunebench.evaluate.generation import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    reference = generate(model, batched.state.served.tokenizer, PROMPTS, max_new_tokens=16, batch_size=4)
    out = asyncio.run(generate_all(batched, [{"inputs": p, "parameters": {"max_new_tokens": 16}} for p in PROMPTS]))
    assert [o["generated_text"] for o in out] == [r.text for r in reference]


def finish_times(live, short_tokens=4):
    """Start a long stream, and once its first token arrived, a short request: when did each finish?"""
    finished: dict[str, float] = {}
    started = threading.Event()

    def long_stream():
        body = {"inputs": "The engine", "parameters": {"max_new_tokens": LONG, "ignore_eos": True}}
        with live.client() as c, c.stream("POST", "/generate_stream", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    started.set()
        finished["long"] = time.monotonic()

    thread = threading.Thread(target=long_stream)
    thread.start()
    assert started.wait(60)
    live.generate("Simmer", max_new_tokens=short_tokens, ignore_eos=True)
    finished["short"] = time.monotonic()
    thread.join(120)
    return finished


def test_short_request_overtakes_a_long_one_only_when_batched(batched, naive):
    on_batched = finish_times(batched)
    assert on_batched["short"] < on_batched["long"]
    on_naive = finish_times(naive)  # one at a time: the short request waits for the long one
    assert on_naive["short"] > on_naive["long"]


def test_engines_agree_on_gpt_neox(tiny_neox_dir):
    """RedPajama is a GPT-NeoX model: the padded batch cache must give its exact greedy output too."""
    servers = [start(tiny_neox_dir, engine=engine) for engine in ("batched", "naive")]
    try:
        requests = [{"inputs": p, "parameters": {"max_new_tokens": 12 + 4 * i, "ignore_eos": True, "details": True}}
                    for i, p in enumerate(PROMPTS)]
        together = asyncio.run(generate_all(servers[0][1], requests))
        alone = [servers[1][1].generate(r["inputs"], **r["parameters"]) for r in requests]
        for a, b in zip(together, alone, strict=True):
            assert [t["id"] for t in a["details"]["tokens"]] == [t["id"] for t in b["details"]["tokens"]]
    finally:
        for background, _ in servers:
            background.stop()
