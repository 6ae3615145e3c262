"""Evaluation through the serving engine offline (`eval.engine: batched`): the same greedy predictions as
padded `model.generate` in fp32, with and without a shared few-shot prefix, stop strings included; the
engine choice rules."""

from __future__ import annotations

import pytest
from test_eval_generation import FEW_SHOT, PROMPTS, count_fed_tokens

from tunebench.evaluate.generation import generate, resolve_engine
from tunebench.serve.engine import GenerationRequest
from tunebench.serve.sampling import SamplingParams


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_neox_dir"])
def test_engine_predictions_equal_padded_generate(fixture, request, load_tiny):
    model, tok = load_tiny(request.getfixturevalue(fixture))
    padded = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=4, engine="padded")
    progress: list[int] = []
    engine = generate(model, tok, PROMPTS, max_new_tokens=10, batch_size=4, engine="batched",
                      on_progress=progress.append)
    assert engine == padded
    assert len({g.text for g in engine}) > 1  # different continuations: the input order is kept
    assert sum(progress) == len(PROMPTS)


def test_engine_cuts_at_stop_strings_as_padded_does(tiny_llama_dir, load_tiny):
    model, tok = load_tiny(tiny_llama_dir)
    free = generate(model, tok, PROMPTS, max_new_tokens=12, engine="padded")
    stop = free[0].text[2:4]  # a string the first continuation contains
    padded = generate(model, tok, PROMPTS, max_new_tokens=12, stop=[stop], engine="padded")
    engine = generate(model, tok, PROMPTS, max_new_tokens=12, stop=[stop], engine="batched")
    assert [(g.text, g.finish_reason) for g in engine] == [(g.text, g.finish_reason) for g in padded]
    # Padded rows stopped by a stop string are filled with the pad id, which is EOS here, so the padded
    # count takes one pad for the end token; the engine counts what it generated.
    assert all(e.n_tokens in (p.n_tokens, p.n_tokens - 1) for e, p in zip(engine, padded, strict=True))
    assert engine[0].finish_reason == "stop" and engine[0].n_tokens < 12 and stop not in engine[0].text


def test_engine_runs_a_shared_prefix_once_and_changes_no_token(tiny_llama_dir, load_tiny):
    from tunebench.evaluate.generation import common_prefix_length, encode

    model, tok = load_tiny(tiny_llama_dir)
    prompts = [FEW_SHOT + f"Dialogue: {p}\nSummary:" for p in PROMPTS]
    padded = generate(model, tok, prompts, max_new_tokens=8, engine="padded")
    fed = count_fed_tokens(model)
    engine = generate(model, tok, prompts, max_new_tokens=8, engine="batched")
    assert engine == padded
    encoded = [encode(tok, p) for p in prompts]
    shared = common_prefix_length(encoded)
    # The shared beginning ran once (its own pass), then prefills fed only the (left-padded) rest of each
    # prompt; two one-token probes (full attention?) and the decode steps, one token per row.
    rest = max(len(e) - shared for e in encoded)
    assert fed[0] <= shared + len(prompts) * rest + 2 + 8 * len(prompts) < sum(len(e) for e in encoded) / 2


def test_engine_choice(tiny_llama_dir, tiny_t5_dir, load_tiny):
    from tunebench.errors import UserError

    causal, _ = load_tiny(tiny_llama_dir)
    seq2seq, _ = load_tiny(tiny_t5_dir, seq2seq=True)
    assert resolve_engine("auto", causal) == "padded"  # CPU: padded (auto picks batched on CUDA only)
    assert resolve_engine("batched", causal) == "batched"
    with pytest.raises(UserError, match="causal model"):
        resolve_engine("batched", seq2seq)
    with pytest.raises(UserError, match="CUDA"):
        resolve_engine("continuous", causal)


def test_offline_run_returns_results_in_request_order(tiny_llama_dir, load_tiny):
    from tunebench.serve.offline import offline_engine, run_offline

    model, tok = load_tiny(tiny_llama_dir)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    engine = offline_engine(model, tok, longest=64, slots=3)  # fewer slots than requests: rows are reused
    out = run_offline(engine, [GenerationRequest(ids, SamplingParams(max_new_tokens=5 + i, ignore_eos=True))
                               for i, ids in enumerate(prompts)])
    assert [c.generated_tokens for c in out] == [5 + i for i in range(len(prompts))]
    assert [c.prompt_tokens for c in out] == [len(p) for p in prompts]
    assert run_offline(engine, []) == []


def test_engine_cache_is_gone_when_generate_returns(tiny_llama_dir, load_tiny, monkeypatch):
    """Each `generate` call sizes its KV slots in the memory left free: an engine (and its cache) kept past the
    call would shrink the next one's (the benchmark's spy once kept a warm-up engine: 14 slots fit instead of
    hundreds)."""
    import gc
    import weakref

    import tunebench.serve.offline as offline

    caches: list[weakref.ref] = []
    build = offline.offline_engine

    def watched(*args, **kwargs):
        engine = build(*args, **kwargs)
        caches.append(weakref.ref(engine.cache.all_keys))
        return engine

    monkeypatch.setattr(offline, "offline_engine", watched)
    model, tok = load_tiny(tiny_llama_dir)
    generate(model, tok, PROMPTS[:2], max_new_tokens=3, engine="batched")
    generate(model, tok, PROMPTS, max_new_tokens=3, engine="batched")
    gc.collect()
    assert len(caches) == 2 and all(ref() is None for ref in caches)


def test_eval_cli_through_the_engine_predicts_as_padded(cli, tmp_path, tiny_llama_dir):
    """`tunebench eval --set eval.engine=batched` end to end: the same predictions as padded generation."""
    import json

    from tunebench.config.schema import CellConfig
    from tunebench.evaluate import evaluate_cell
    from tunebench.rundir import RunDir

    out = tmp_path / "engine"
    result = cli("eval", str(tiny_llama_dir), "--task", "summarization", "--data", "builtin:summarization",
                 "--method", "few_shot", "--limit", "4", "--max-new-tokens", "6", "--out", str(out),
                 "--set", "eval.engine=batched", "--set", "eval.bootstrap=10")
    assert result.returncode == 0, result.stderr
    cell = CellConfig.model_validate({"model": {"name": str(tiny_llama_dir)}, "method": "few_shot",
                                      "data": {"source": "builtin:summarization", "task": "summarization"},
                                      "eval": {"max_new_tokens": 6, "bootstrap": 10, "engine": "padded"}})
    run = RunDir(tmp_path / "padded")
    evaluate_cell(cell, run, limit=4, progress=False)

    def rows(path):
        return [json.loads(line) for line in path.read_text().splitlines()]

    engine, padded = rows(out / "predictions.jsonl"), rows(run.eval_dir("test", "few_shot") / "predictions.jsonl")
    keys = ("prediction", "finish_reason", "prompt_tokens")
    assert len(engine) == 4 and [[r[k] for k in keys] for r in engine] == [[r[k] for k in keys] for r in padded]
