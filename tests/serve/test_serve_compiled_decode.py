"""torch.compile of the batched engine's decode step (TUNEBENCH_DECODE_COMPILE, `tunebench.serve.compiled`): the
same greedy tokens and log-probabilities as eager in fp32, and a failure to compile decodes eagerly.

Compiled with the "aot_eager" backend: dynamo's tracing, the graph breaks around the KV write and the
registered attention, and AOTAutograd's functionalization of the in-place cache writes all run; inductor's code
generation (minutes of C++ on a 2-core CPU) does not (by hand, inductor on the CPU: logits within 1.2e-7).
"""

from __future__ import annotations

import asyncio

import pytest
from test_serve_kvcache import PROMPTS, assert_same_tokens, engine_for, load, request, run_schedule


@pytest.fixture(scope="module")
def neox(tiny_neox_dir):
    return load(tiny_neox_dir)


def schedule_tokens(served, monkeypatch, mode: str, attention: str = "sdpa") -> tuple[list, object]:
    """A long sequence, a second joining after 6 tokens (steps of 1 then 2 rows, widths growing): tokens of both,
    and the engine's compiler."""
    monkeypatch.setenv("TUNEBENCH_DECODE_COMPILE", mode)
    monkeypatch.setenv("TUNEBENCH_DECODE_COMPILE_BACKEND", "aot_eager")
    monkeypatch.setenv("TUNEBENCH_DECODE_ATTENTION", attention)
    if mode != "off":
        import torch

        torch._dynamo.reset()  # each test compiles its own graphs (an earlier test's would be reused, uncounted)
    engine = engine_for(served)
    reqs = [request(served, PROMPTS[1], 20), request(served, PROMPTS[0], 8)]
    return asyncio.run(run_schedule(engine, [(reqs[0], None), (reqs[1], (0, 6))])), engine.runner.compiler


@pytest.mark.parametrize(("mode", "attention"), [
    ("layers", "sdpa"), ("layers", "flex"), pytest.param("model", "sdpa", marks=pytest.mark.slow)])
def test_compiled_decode_gives_the_eager_tokens(neox, monkeypatch, mode, attention):
    eager, _ = schedule_tokens(neox, monkeypatch, "off", attention)
    compiled, compiler = schedule_tokens(neox, monkeypatch, mode, attention)
    assert compiler.mode == mode and compiler.errors == {}
    # It compiled, and nothing fell back.
    assert compiler.compiles > 0
    if attention == "flex":
        assert compiler.calls.get("decode-flex", 0) > 0  # flex steps ran the compiled layers
    for got, expected in zip(compiled, eager, strict=True):
        assert_same_tokens(got, expected)


def test_compiled_prefill_gives_the_eager_tokens(neox, monkeypatch):
    """TUNEBENCH_PREFILL_COMPILE=1: prefills (a joining prompt too) run the compiled layers, same tokens."""
    eager, _ = schedule_tokens(neox, monkeypatch, "off")
    monkeypatch.setenv("TUNEBENCH_PREFILL_COMPILE", "1")
    compiled, compiler = schedule_tokens(neox, monkeypatch, "layers")
    assert compiler.errors == {} and compiler.calls.get("prefill", 0) > 0
    for got, expected in zip(compiled, eager, strict=True):
        assert_same_tokens(got, expected)


def test_a_failed_compile_decodes_eagerly_with_the_same_tokens(neox):
    """A backend that raises: the step kind falls back to eager, logs why, and other kinds stay compiled."""
    import torch

    from tunebench.serve.compiled import DecodeCompiler

    def broken(graph, example_inputs):
        raise RuntimeError("no compiler here")

    engine = engine_for(neox)
    runner = engine.runner
    runner.start_rows(0, [4, 7], torch.tensor([5, 9]))
    with torch.inference_mode():
        expected = runner.forward(2, 32, {}).logits.clone()
        runner.compiler = DecodeCompiler(neox.model, runner.cache, "layers", backend=broken)
        got = runner.forward(2, 32, {}).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert "no compiler here" in runner.compiler.errors["decode"]
    assert runner.compiler.active("decode-flex") and not runner.compiler.active("decode")


def test_an_unknown_compile_mode_is_refused(monkeypatch):
    from tunebench.serve.compiled import compile_mode

    monkeypatch.setenv("TUNEBENCH_DECODE_COMPILE", "fast")
    with pytest.raises(ValueError, match="allowed: off, layers, model"):
        compile_mode("cuda")
    monkeypatch.delenv("TUNEBENCH_DECODE_COMPILE")
    assert compile_mode("cuda") == "layers" and compile_mode("cpu") == "off"


def test_offline_runs_decode_eagerly_unless_asked(neox, monkeypatch):
    """An offline run (evaluation) pays compiling once for a few hundred steps: eager unless the variable is set."""
    monkeypatch.setenv("TUNEBENCH_DECODE_COMPILE", "layers")
    monkeypatch.setenv("TUNEBENCH_DECODE_COMPILE_BACKEND", "aot_eager")
    asked = engine_for(neox).runner
    asked.offline = True
    assert asked.compiler.mode == "layers"
    default = engine_for(neox).runner  # a served engine whose mode came from the default (here: the variable)
    monkeypatch.delenv("TUNEBENCH_DECODE_COMPILE")
    default.offline = True
    assert default.compiler.mode == "off"
