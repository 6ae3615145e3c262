"""torch.compile of the batched engine's decode step (TUNEBENCH_DECODE_COMPILE, `tunebench.serve.compiled`): the
same greedy tokens and log-probabilities as eager in fp32, and a failure to compile decodes eagerly.

Compiled with the "aot_eager" backend: dynamo's tracing, the graph breaks around the KV write and the
registered attention, and AOTAutograd's functionalization of the in-place cache writes all run; inductor's code
generation (minutes of C++ on a 2-core CPU) does not (by hand, inductor on the CPU: logits within 1.2e-7).
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from serve_helpers import load
from test_serve_kvcache import PROMPTS, assert_same_tokens, engine_for, request, run_schedule


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
    # The second prompt joins at once rather than after the 50 ms prefill delay: a warm CPU finishes the first
    # sequence within it, and the 2-row steps (FlexAttention's) would not run at all.
    engine.limits = dataclasses.replace(engine.limits, prefill_delay=0.0)
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




def test_one_compiled_attention_frame_serves_every_layer(neox, tmp_path, monkeypatch, caplog):
    """The attention module's forward (a frame of its own, after the graph break at the KV write) gets the
    layer index as a tensor under compiled layers, so its compiled entries do not grow with the layer count:
    a 6-layer model compiles as many as the 2-layer one. (With the int index, one entry per layer and shape
    class: a 32-layer model passed a fixed recompile limit of 64 on the H200, and its start-up compiled 177
    graphs.) The limit still grows with the layers, and no layer falls back to eager code."""
    import copy
    import logging

    import torch
    from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list
    from transformers import AutoModelForCausalLM
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention

    from tunebench.serve import compiled

    config = copy.deepcopy(neox.model.config)
    config.num_hidden_layers = 6
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    neox.tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(compiled, "RECOMPILE_LIMIT", 4)  # below dynamo's default of 8: the per-layer share decides
    monkeypatch.setenv("TUNEBENCH_PREFILL_COMPILE", "1")
    entries = {}
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        for name, served in (("2 layers", neox), ("6 layers", load(tmp_path))):
            torch._dynamo.reset()
            _, compiler = schedule_tokens(served, monkeypatch, "layers")
            assert compiler.errors == {} and compiler.calls.get("prefill", 0) > 0 and compiler.calls["decode"] > 0
            entries[name] = len(_debug_get_cache_entry_list(GPTNeoXAttention.forward.__code__))
            assert all(isinstance(m.layer_idx, int) for m in served.model.modules() if hasattr(m, "layer_idx"))
    assert 0 < entries["6 layers"] == entries["2 layers"], entries
    hits = [r.getMessage()[:300] for r in caplog.records if "recompile_limit" in r.getMessage()
            or "cache_size_limit" in r.getMessage()]
    assert not hits


def test_compiled_prefills_default_to_cuda(monkeypatch):
    from tunebench.serve.graphs import prefill_compile

    monkeypatch.delenv("TUNEBENCH_PREFILL_COMPILE", raising=False)
    assert prefill_compile("cuda") is True  # unmerged adapters too: the warm-up compiles each one's code
    assert prefill_compile("cpu") is False
    monkeypatch.setenv("TUNEBENCH_PREFILL_COMPILE", "1")
    assert prefill_compile("cpu") is True
    monkeypatch.setenv("TUNEBENCH_PREFILL_COMPILE", "0")
    assert prefill_compile("cuda") is False
    monkeypatch.setenv("TUNEBENCH_PREFILL_COMPILE", "yes")
    with pytest.raises(ValueError, match="allowed: 0, 1"):
        prefill_compile("cuda")
