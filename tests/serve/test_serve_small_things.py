"""Small things a user trips on: /docs counted under its own route, the CPU KV cache within a budget, a bad
adapter rejected before the model loads."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_docs_and_openapi_are_their_own_routes_in_metrics():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from tunebench.serve.app import MetricsMiddleware

    class Metrics:
        registry = CollectorRegistry()
        requests = Counter("requests", "", ["route", "status"], registry=registry)
        request_latency = Histogram("latency", "", ["route"], registry=registry)

    app = FastAPI()
    app.add_middleware(MetricsMiddleware, metrics=Metrics)

    @app.get("/items/{item}")
    async def item(item: str) -> dict:
        return {"item": item}

    with TestClient(app) as client:
        for path in ("/docs", "/openapi.json", "/items/a", "/nowhere"):
            client.get(path)
    routes = {s.labels["route"] for m in Metrics.registry.collect() for s in m.samples if "route" in s.labels}
    assert {"/docs", "/openapi.json", "/items/{item}", "unmatched"} <= routes


def test_the_cpu_kv_cache_stays_within_its_budget(monkeypatch):
    import torch

    from tunebench.serve.kvcache import bytes_per_slot, slots_that_fit

    # SmolLM2-135M in float32 at the default request limits (2,048 + 256 tokens + scratch): 106 MB a slot
    per_slot = bytes_per_slot(30, 3, 64, 2305, torch.float32)
    assert slots_that_fit(32, per_slot, torch.device("cpu"), 0) * per_slot <= 2**30
    assert slots_that_fit(32, per_slot, torch.device("cpu"), 0) == 10
    assert slots_that_fit(4, 1000, torch.device("cpu"), 0) == 4   # small limits: every slot asked for
    monkeypatch.setenv("TUNEBENCH_CPU_KV_GIB", "0.0001")
    assert slots_that_fit(32, per_slot, torch.device("cpu"), 0) == 1


@pytest.mark.parametrize("adapter", ["x=/nonexistent", "x=."])
def test_a_bad_adapter_fails_before_loading_the_model(adapter):
    result = subprocess.run([sys.executable, "-m", "tunebench.cli", "serve", "smollm2-135m-instruct", "--adapter",
                             adapter, "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "adapter 'x'" in result.stderr
    assert "loading" not in result.stdout + result.stderr


def test_the_serve_section_and_the_server_options_share_their_defaults():
    """A run's `serve:` section fills the server's options: a default that differs would change behaviour by
    whether --run was given."""
    import dataclasses

    from tunebench.config.schema import ServeConfig
    from tunebench.serve.options import ServerOptions, engine_limits

    section, options = ServeConfig(), ServerOptions()
    shared = [f.name for f in dataclasses.fields(ServerOptions) if f.name in ServeConfig.model_fields]
    assert "max_prefill_tokens" in shared and len(shared) >= 8
    for name in shared:
        if name != "frontends":  # "auto" in YAML, 0 in the options
            assert getattr(section, name) == getattr(options, name), name
    assert engine_limits(dataclasses.replace(options, max_prefill_tokens=777)).prefill_budget == 777
    assert engine_limits(dataclasses.replace(options, waiting_served_ratio=0.5)).waiting_served_ratio == 0.5


def test_short_prompts_are_tokenized_on_the_loop_and_long_ones_in_the_tokenizing_thread():
    import asyncio
    import threading

    from tunebench.serve.schemas import ChatRequest
    from tunebench.serve.state import INLINE_TOKENIZE_CHARS, ServerState, text_size

    chat = ChatRequest.model_validate({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "x" * 5000}]},
        {"role": "assistant", "content": "y" * 5000}]})
    assert 10_000 <= text_size((chat,), 100_000) < 10_100  # text parts inside messages inside the body count
    assert text_size((chat,), 10) > 10  # counting stops once past the limit
    assert text_size((object(), 3, None), 10) == 0

    state = ServerState(served=None, engine=None, metrics=None, options=None, builder=None)
    release = threading.Event()

    def where(text: str, wait: bool = False) -> str:
        if wait:
            release.wait(10)
        return threading.current_thread().name

    async def main() -> tuple[str, str, str, str]:
        short = await state.build(where, "a short prompt")
        long = await state.build(where, "z" * (INLINE_TOKENIZE_CHARS + 1))
        blocked = asyncio.ensure_future(state.build(where, "z" * (INLINE_TOKENIZE_CHARS + 1), True))
        await asyncio.sleep(0.05)  # the long one is in the thread now
        # a short prompt waits its turn in the thread: the tokenizer is never called by two threads at once
        behind = asyncio.ensure_future(state.build(where, "short"))
        await asyncio.sleep(0.05)
        assert not behind.done()
        release.set()
        return short, long, await blocked, await behind

    short, long, blocked, behind = asyncio.run(main())
    loop_thread = threading.current_thread().name
    assert short == loop_thread
    assert long.startswith("tunebench-tokenize") and blocked.startswith("tunebench-tokenize")
    assert behind.startswith("tunebench-tokenize")
    assert state._threaded == 0


@pytest.mark.parametrize("value", ["abc", "-1"])
def test_a_malformed_inline_tokenization_setting_is_refused_before_loading(tiny_llama_dir, value):
    import os

    result = subprocess.run([sys.executable, "-m", "tunebench.cli", "serve", str(tiny_llama_dir), "--port", "0"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TUNEBENCH_TOKENIZE_INLINE_CHARS": value})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"TUNEBENCH_TOKENIZE_INLINE_CHARS='{value}'" in result.stderr and "whole number" in result.stderr
    assert "loading" not in result.stdout + result.stderr
