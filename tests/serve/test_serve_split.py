"""The split front end (issue 20): HTTP in this process, the engine in a process of its own. The API suites run
against it through the `batched` fixture; here what only the split has: the engine process dying, and its
messages across the boundary (cancel, stop strings, jobs, metrics)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from serve_helpers import LONG, sse_events, start


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


@pytest.fixture
def split(batched):
    """The session's batched server (tests/serve/conftest.py), which runs split (serve_helpers.start's default)."""
    assert batched.state.options.frontend == "split"
    return batched


@pytest.fixture
def doomed(tiny_llama_dir):
    """A split server of its own: its engine process is killed."""
    background, live = start(tiny_llama_dir, frontend="split")
    yield live
    background.stop()


def test_split_server_generates_like_the_inline_one(split, tiny_llama_dir, lora_adapters):
    bodies = [{"inputs": "The engine", "parameters": {"max_new_tokens": 12, "details": True, **extra}}
              for extra in ({}, {"adapter_id": "alpha"}, {"do_sample": True, "seed": 7, "temperature": 0.8})]
    ours = [split.post("/generate", body).json() for body in bodies]
    background, inline = start(tiny_llama_dir, lora_adapters, frontend="inline")
    try:
        theirs = [inline.post("/generate", body).json() for body in bodies]
    finally:
        background.stop()
    for a, b in zip(ours, theirs, strict=True):
        assert a["generated_text"] == b["generated_text"]
        assert [t["id"] for t in a["details"]["tokens"]] == [t["id"] for t in b["details"]["tokens"]]
    with split.client() as c:
        assert c.get("/info").json()["frontend"] == "split"


def test_the_engine_process_froze_its_heap_before_it_reported_ready(split):
    # a full collection over a loaded model's objects stalled bursts 0.3-0.5 s on the H200 (lead-21/22)
    assert split.state.engine.heap_frozen > 10_000


def test_killing_the_engine_process_fails_every_open_request_and_health_says_so(doomed):
    pid = doomed.state.engine.process.pid
    outcomes: list = []

    def plain() -> None:
        body = {"inputs": "The engine", "parameters": {"max_new_tokens": LONG, "ignore_eos": True}}
        with doomed.client(timeout=30) as c:
            outcomes.append(("plain", c.post("/generate", json=body).status_code))

    def stream() -> None:
        body = {"inputs": "The engine", "parameters": {"max_new_tokens": LONG, "ignore_eos": True}}
        with doomed.client(timeout=30) as c, c.stream("POST", "/generate_stream", json=body) as r:
            events = sse_events(r.iter_lines())
        outcomes.append(("stream", events[-1].get("error_type") if events else None))

    threads = [threading.Thread(target=f) for f in (plain, plain, stream, stream)]
    for t in threads:
        t.start()
    wait_for(lambda: doomed.state.engine.in_flight == 4)
    time.sleep(0.3)  # tokens are flowing
    started = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a request hung after the engine died"
    assert time.monotonic() - started < 5
    assert sorted(outcomes) == [("plain", 500), ("plain", 500), ("stream", "internal"), ("stream", "internal")]
    with doomed.client() as c:
        health = c.get("/health")
        assert health.status_code == 503 and "killed by signal 9" in health.json()["reason"]
        late = c.post("/generate", json={"inputs": "hello", "parameters": {"max_new_tokens": 2}})
    assert late.status_code == 500 and "engine process" in late.json()["error"]
    assert doomed.state.engine.in_flight == 0


def test_a_start_up_error_in_the_engine_process_reaches_the_caller_as_a_user_error(tiny_llama_dir, neox_adapter):
    from tunebench.errors import UserError
    from tunebench.serve.client import build_split_state
    from tunebench.serve.options import AdapterSpec, ModelOptions, ServerOptions

    opts = ModelOptions(model=str(tiny_llama_dir), adapters=(AdapterSpec("neox", neox_adapter),))
    with pytest.raises(UserError) as refused:
        build_split_state(opts, ServerOptions(frontend="split"))
    assert "adapter 'neox'" in refused.value.problem and "--adapter neox=" in refused.value.fix


def test_auto_splits_on_cuda_only():
    from tunebench.serve.options import resolved_frontend

    assert resolved_frontend("auto", "cuda:1") == "split"
    assert resolved_frontend("auto", "cpu") == "inline"
    assert resolved_frontend("inline", "cuda") == "inline"


def test_metrics_cross_the_boundary(split):
    before = split.metrics()
    split.generate("The engine", max_new_tokens=5, ignore_eos=True)
    metrics = split.metrics()
    # one prefill launch of one prompt (what the serving benchmark reads to compare a burst with offline)
    assert metrics["tunebench_prefill_size_count"] - before["tunebench_prefill_size_count"] == 1
    assert metrics["tunebench_prefill_size_sum"] - before["tunebench_prefill_size_sum"] == 1
    # the engine thread's time by phase crosses too: on the CPU the passes themselves are prefill and launch
    spent = {phase: metrics[f'tunebench_engine_seconds_total{{phase="{phase}"}}'] -
             before[f'tunebench_engine_seconds_total{{phase="{phase}"}}'] for phase in ("prefill", "launch", "channel")}
    # "channel": the engine process's messages between iterations (the request in, its tokens out)
    assert all(seconds > 0 for seconds in spent.values()), spent
    assert metrics["tunebench_time_to_first_token_seconds_count"] >= 1
    assert metrics["tunebench_inter_token_latency_seconds_count"] >= 4
    assert metrics["tunebench_generated_tokens_sum"] >= 5 and metrics["tunebench_batch_size_count"] >= 5


def test_a_stop_string_found_by_the_front_end_ends_the_request_in_the_engine(split):
    text = split.generate("The engine", max_new_tokens=40, ignore_eos=True)["generated_text"]
    stop = text[4:9]  # a piece of what greedy decoding produces
    before = split.metrics()["tunebench_generated_tokens_sum"]
    out = split.generate("The engine", max_new_tokens=400, ignore_eos=True, stop=[stop], details=True)
    assert out["details"]["finish_reason"] == "stop_sequence" and stop in out["generated_text"]
    wait_for(lambda: split.metrics()["tunebench_running_sequences"] == 0, timeout=60)
    # the engine let it go: had it run on to its 400 tokens, it would have counted those
    assert split.metrics()["tunebench_generated_tokens_sum"] - before == out["details"]["generated_tokens"] < 400


def test_a_study_files_serve_frontend_is_validated(tmp_path):
    from tunebench.config.study import load_study
    from tunebench.errors import UserError

    path = tmp_path / "s.yaml"
    path.write_text("name: x\ndefaults: {serve: {frontend: threads}}\nexperiments:\n  - method: zero_shot\n")
    with pytest.raises(UserError) as info:
        load_study(path)
    assert "serve.frontend = 'threads'" in info.value.problem and "'split'" in (info.value.fix or "")
    path.write_text("name: x\ndefaults: {serve: {frontend: split}}\nexperiments:\n  - method: zero_shot\n")
    assert load_study(path).cells[0].config.serve.frontend == "split"


def test_the_prefill_token_budget_reaches_the_engine_process(tiny_llama_dir):
    """--max-prefill-tokens bounds each prefill launch: at 1 token, every prompt is prefilled alone."""
    import concurrent.futures

    background, live = start(tiny_llama_dir, frontend="split", max_prefill_tokens=1)
    try:
        before = live.metrics()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            done = list(pool.map(lambda text: live.generate(text, max_new_tokens=8, ignore_eos=True),
                                 ["The engine", "Plant the seedlings", "Anna: lunch?", "Solder the board"]))
        assert all(d["generated_text"] for d in done)
        after = live.metrics()
        launches = after["tunebench_prefill_size_count"] - before["tunebench_prefill_size_count"]
        assert launches == 4 and after["tunebench_prefill_size_sum"] - before["tunebench_prefill_size_sum"] == 4
    finally:
        background.stop()


def test_the_engine_process_traces_when_requests_reach_it(tiny_llama_dir, tmp_path, monkeypatch):
    import json

    trace = tmp_path / "arrivals.jsonl"
    monkeypatch.setenv("TUNEBENCH_ENGINE_ARRIVALS", str(trace))  # read by the engine process it spawns
    background, live = start(tiny_llama_dir, frontend="split")
    try:
        before = time.time()
        threads = [threading.Thread(target=live.generate, args=("The engine",), kwargs={"max_new_tokens": 2})
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        background.stop()
    reads = [json.loads(line) for line in trace.read_text().splitlines()]
    assert sum(r["submits"] for r in reads) == 3 and all(r["t"] >= before for r in reads)
