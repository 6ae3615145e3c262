"""In-process parts of the serving benchmark (no HTTP): graph vs eager on the same batches, the engine's
step-time breakdown, bursts through the engine offline, and the LoRA adapter it serves.

Imported by benchmarks/serve_throughput.py (run from benchmarks/, or with it on the path)."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from serve_report import log


def make_adapter(model: str, out: Path) -> Path:
    """A LoRA adapter (r=16 on the preset's LoRA targets, as training uses; random A and B) for the model,
    built on the meta device so no 3B model is materialized here."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from tunebench.config.schema import ModelConfig
    from tunebench.models.loading import architecture_config, resolve

    cfg = ModelConfig(name=model, random_weights=True)
    source = resolve(cfg)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(architecture_config(source, cfg))
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=source.lora_targets, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)
    generator = torch.Generator().manual_seed(0)
    state = {name: torch.randn(t.shape, generator=generator, dtype=torch.float32) * 0.01
             for name, t in get_peft_model_state_dict(peft_model).items()}
    out.mkdir(parents=True, exist_ok=True)
    lora.base_model_name_or_path = None
    lora.save_pretrained(out)
    save_file(state, out / "adapter_model.safetensors")
    return out


def graph_matches_eager(args: argparse.Namespace, tokenizer: Path, texts: list[str]) -> dict[str, Any]:
    """The same prompts (a mixed-length batch, so rows of different lengths share steps) through the batched
    engine with CUDA graphs and without; same batches and shape buckets, so the kernels and tokens must match."""
    import os

    from tunebench.serve.engine import EngineLimits, create_engine
    from tunebench.serve.loading import load_served
    from tunebench.serve.metrics import ServeMetrics
    from tunebench.serve.options import ModelOptions

    served = load_served(ModelOptions(model=args.model, random_weights=True, tokenizer=str(tokenizer),
                                      device=args.device))
    prompts = [served.tokenizer(t, add_special_tokens=False)["input_ids"][:n] for t, n in
               zip(texts, (100, 7, 60, 33, 100, 12, 90, 48), strict=False)]
    limits = EngineLimits(max_batch=16, max_sequence_tokens=256)
    outputs, profiles = {}, {}
    for mode, flag in (("eager", "0"), ("graphs", "1")):
        os.environ["TUNEBENCH_CUDA_GRAPHS"] = flag
        engine = create_engine("batched", served, limits, ServeMetrics("batched"))
        started = time.monotonic()
        outputs[mode] = asyncio.run(generate_with(engine, prompts, 48))
        profiles[mode] = {"wall_s": round(time.monotonic() - started, 3), **step_breakdown(engine)}
        del engine
    os.environ.pop("TUNEBENCH_CUDA_GRAPHS", None)
    same = [a == b for a, b in zip(outputs["eager"], outputs["graphs"], strict=True)]
    first_diff = [next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
                  for a, b in zip(outputs["eager"], outputs["graphs"], strict=True)]
    return {"check": "graph_vs_eager", "prompts": len(prompts), "identical": sum(same),
            "first_difference_at": first_diff, "profiles": profiles}


async def generate_with(engine: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    from tunebench.serve.engine import GenerationRequest
    from tunebench.serve.sampling import SamplingParams

    engine.start(asyncio.get_running_loop())
    try:
        warm = engine.submit(GenerationRequest(prompts[0], SamplingParams(max_new_tokens=4, ignore_eos=True)))
        await warm.result()
        engine.profile.reset()
        # All at once, so both runs see the same batches (one prefill group); different lengths make rows
        # leave at different steps, so compaction and shrinking buckets are exercised.
        handles = [engine.submit(GenerationRequest(ids, SamplingParams(max_new_tokens=new_tokens - 4 * i,
                                                                       ignore_eos=True)))
                   for i, ids in enumerate(prompts)]
        results = [await h.result() for h in handles]
    finally:
        await asyncio.to_thread(engine.stop)
    return [[t.id for t in r.tokens] for r in results]


def step_breakdown(engine: Any) -> dict[str, Any]:
    p = engine.profile
    steps = max(p.steps, 1)
    return {"steps": p.steps, "rows_per_step": round(p.rows / steps, 2),
            "gpu_wait_ms_per_step": round(1e3 * p.gpu_wait_s / steps, 3),
            "launch_ms_per_step": round(1e3 * p.launch_s / steps, 3),
            "sampling_ms_per_step": round(1e3 * p.sampling_s / steps, 3),
            "tokens_streaming_ms_per_step": round(1e3 * p.host_s / steps, 3),
            "scheduling_ms_per_step": round(1e3 * p.scheduling_s / steps, 3),
            "prefill_ms_each": round(1e3 * p.prefill_s / max(p.prefills, 1), 2), "prefills": p.prefills,
            "graphs_captured": engine.runner.captures, "graphs_on_at_end": engine.runner.use_graphs,
            "capture_s": round(engine.runner.capture_s, 2),
            "decode_attention": engine.runner.decode_attention.kernel if engine.runner.flex else "sdpa",
            "flex_error": engine.runner.flex_error}


def offline_bursts(args, tokenizer: Path, texts: list[str], profiles: dict[str, int],
                   adapter: tuple[str, Path, bool] | None = None,
                   peer_prompts: int = 0) -> dict[str, dict[str, Any]]:
    """The served bursts (--burst requests, default 2 x slots, texts in the same order) through the engine in
    this process: same model, slots and limits as the server, no HTTP. `adapter`: (name, dir, merge). With
    `peer_prompts`, also the first that many requests of the 100/64 burst through transformers' continuous batching
    (`generate_batch`, its default configuration) and through the engine, as out["continuous_peer"]."""
    import gc

    import torch

    from tunebench.serve.engine import EngineLimits, GenerationRequest, create_engine
    from tunebench.serve.loading import load_served
    from tunebench.serve.metrics import ServeMetrics
    from tunebench.serve.offline import run_offline
    from tunebench.serve.options import AdapterSpec, ModelOptions
    from tunebench.serve.sampling import SamplingParams

    adapters = (AdapterSpec(adapter[0], adapter[1]),) if adapter else ()
    served = load_served(ModelOptions(model=args.model, random_weights=True, tokenizer=str(tokenizer),
                                      device=args.device, adapters=adapters, merge=bool(adapter and adapter[2])))
    budget = getattr(args, "max_prefill_tokens", None) or EngineLimits.prefill_budget  # the served engine's
    ratio = getattr(args, "waiting_served_ratio", None)
    ratio = EngineLimits.waiting_served_ratio if ratio is None else ratio
    engine = create_engine("batched", served, EngineLimits(max_batch=args.slots, max_queue=2048, request_timeout=60,
                                                           max_sequence_tokens=128 + 128, prefill_budget=budget,
                                                           waiting_served_ratio=ratio),
                           ServeMetrics("batched"))
    name = adapter[0] if adapter and not adapter[2] else None
    prompts = [served.tokenizer(t)["input_ids"][:128] for t in texts]
    count = getattr(args, "burst", None) or 2 * args.slots

    def requests(new_tokens: int) -> list[Any]:
        return [GenerationRequest(prompts[i % len(prompts)], SamplingParams(max_new_tokens=new_tokens,
                                                                            ignore_eos=True), name)
                for i in range(count)]

    out: dict[str, dict[str, Any]] = {}
    try:
        run_offline(engine, requests(8))  # graphs for every bucket, as the served warm-up burst
        for profile, new_tokens in profiles.items():
            started = time.monotonic()
            done = run_offline(engine, requests(new_tokens))
            torch.cuda.synchronize() if args.device.startswith("cuda") else None
            wall = time.monotonic() - started
            tokens = sum(c.generated_tokens for c in done)
            out[profile] = {"requests": count, "ok": len(done), "wall_s": round(wall, 3),
                            "requests_per_s": round(len(done) / wall, 2),
                            "output_tokens_per_s": round(tokens / wall, 1), "profile": step_breakdown(engine)}
            log(f"offline {profile}{' ' + adapter[0] if adapter else ''} burst: {out[profile]}")
        if peer_prompts:
            out["continuous_peer"] = continuous_peer(served, engine, requests(64)[:peer_prompts], args)
            log(f"continuous batching peer: {out['continuous_peer']}")
    finally:
        del engine, served
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def continuous_peer(served: Any, engine: Any, requests: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The same requests through transformers' continuous batching and through the engine offline (greedy, 64
    new tokens; random weights rarely end early, and tokens/s counts what each generated)."""
    import torch

    from tunebench.evaluate.generation import generate_continuous, generation_config
    from tunebench.serve.offline import run_offline

    def synchronize() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    new_tokens = requests[0].params.max_new_tokens
    encoded = [list(r.prompt_ids) for r in requests]
    out: dict[str, Any] = {"prompts": len(requests), "new_tokens": new_tokens}
    started = time.monotonic()
    done = run_offline(engine, requests)
    synchronize()
    wall = time.monotonic() - started
    out["engine_offline"] = {"wall_s": round(wall, 3),
                             "output_tokens_per_s": round(sum(c.generated_tokens for c in done) / wall, 1)}
    try:
        config = generation_config(served.model, served.tokenizer, max_new_tokens=new_tokens, do_sample=False,
                                   temperature=1.0, top_p=1.0)
        generate_continuous(served.model, served.tokenizer, encoded[:8], config, stop=(), on_progress=None)  # warm-up
        synchronize()
        started = time.monotonic()
        results = generate_continuous(served.model, served.tokenizer, encoded, config, stop=(), on_progress=None)
        synchronize()
        wall = time.monotonic() - started
        out["continuous"] = {"wall_s": round(wall, 3),
                             "output_tokens_per_s": round(sum(g.n_tokens for g in results) / wall, 1)}
        out["engine_over_continuous"] = round(out["engine_offline"]["output_tokens_per_s"]
                                              / out["continuous"]["output_tokens_per_s"], 2)
    except Exception as err:  # the peer failing is a result too
        out["continuous"] = {"error": f"{type(err).__name__}: {err}"[:300]}
    return out
