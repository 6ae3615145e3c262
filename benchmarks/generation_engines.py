"""Evaluation's generation engines on the GPU: tunebench's engine offline vs `model.generate` padded batches vs
transformers' continuous batching, on the same prompts.

    python benchmarks/generation_engines.py [--model redpajama-3b] [--prompts 818] [--new-tokens 64]

The prompts have SAMSum validation lengths (818 dialogues): lengths are drawn from the SAMSum histogram of
benchmarks/data/token_profile.json (training sequences, prompt + summary), scaled by the profile's mean prompt /
mean sequence length, so the distribution is that of summarization prompts (zero-shot, no shared prefix).
Random weights of a preset's architecture in bf16, greedy decoding up to --new-tokens (random weights rarely
hit EOS; tokens/s counts the tokens actually generated). Each engine runs `tunebench.evaluate.generation.
generate` as an evaluation does (the engine's CUDA-graph captures included in its time, and reported apart).
Prints one JSON line: seconds, generated tokens/s and the ratio to padded per engine, how many greedy outputs
equal padded's (bf16: batching changes rounding, so a close call can differ), and where the engine's time went.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
PROFILE = Path(__file__).resolve().parent / "data" / "token_profile.json"
ENGINES = ("batched", "padded", "continuous")


def build(model_name: str) -> tuple[Any, Any]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from tunebench.models.presets import PRESETS

    arch = dict(PRESETS[model_name].architecture)
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    with torch.device("cuda"):  # random weights drawn on the GPU: seconds, not a minute of CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    # A word-level tokenizer over numbers: prompts are token ids written out, no hub needed.
    vocab = {str(i): i for i in range(config.vocab_size)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="0", pad_token="0")
    return model, tok


def samsum_lengths(n: int, seed: int = 0) -> list[int]:
    """n prompt lengths with SAMSum's distribution (see the module docstring)."""
    data = json.loads(PROFILE.read_text())["datasets"]["samsum"]
    edges, counts = data["histogram"]["edges"], data["histogram"]["counts"]
    scale = data["prompt"]["mean"] / data["sequence"]["mean"]
    rng = random.Random(seed)
    bins = rng.choices(range(len(counts)), weights=counts, k=n)
    return [max(8, round(rng.randrange(edges[b], edges[b + 1]) * scale)) for b in bins]


def prompts_for(lengths: list[int], vocab: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(str(rng.randrange(1, vocab)) for _ in range(n)) for n in lengths]


class EngineSpy:
    """Keeps the offline engine `generate` built last, for its step profile (the benchmark's only hook).

    Only the last: a kept engine holds its KV cache, and the next engine sizes its slots in the memory left. Until
    2026-12-06 the warm-up's engine (two prompts) was kept too, so the measured engine found most of the device
    taken (lead-26, H100: 14 slots of 867 tokens fit in ~12 GB); `release` drops it before the measured run."""

    def __init__(self) -> None:
        import tunebench.serve.offline as offline

        self.engines: list[Any] = []
        self._module, self._original = offline, offline.offline_engine

        def spy(*args: Any, **kwargs: Any) -> Any:
            engine = self._original(*args, **kwargs)
            self.engines.append(engine)
            return engine

        offline.offline_engine = spy

    def release(self) -> None:
        """Let the kept engine's KV cache go (collected and handed back to the allocator's free pool)."""
        import torch

        self.engines.clear()
        gc.collect()
        torch.cuda.empty_cache()

    def breakdown(self) -> dict[str, Any]:
        if not self.engines:
            return {}
        engine = self.engines[-1]
        p, runner = engine.profile, engine.runner
        steps = max(p.steps, 1)
        return {"slots": engine.slots, "steps": p.steps, "rows_per_step": round(p.rows / steps, 1),
                "iteration_s": round(p.iteration_s, 3), "prefill_s": round(p.prefill_s, 3), "prefills": p.prefills,
                "prompts_per_prefill": round(p.prefilled / max(p.prefills, 1), 1),
                "gpu_wait_ms_per_step": round(1e3 * p.gpu_wait_s / steps, 3),
                "launch_ms_per_step": round(1e3 * p.launch_s / steps, 3),
                "tokens_ms_per_step": round(1e3 * p.host_s / steps, 3),
                "scheduling_ms_per_step": round(1e3 * p.scheduling_s / steps, 3),
                "graphs_captured": runner.captures, "capture_s": round(runner.capture_s, 2),
                "decode_attention": runner.decode_attention.kernel if runner.flex else "sdpa",
                "flex_error": runner.flex_error,
                "flex_first_step_s": round(runner.flex_first_s, 2)}


def timed(engine: str, model: Any, tok: Any, prompts: list[str], new_tokens: int, batch_size: int,
          spy: EngineSpy) -> dict[str, Any]:
    import torch

    from tunebench.evaluate.generation import generate

    generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=batch_size, engine=engine)  # warm-up
    spy.release()  # the warm-up's engine: its slots must not count against the measured one's
    torch.cuda.synchronize()
    memory = device_memory()
    start = time.perf_counter()
    out = generate(model, tok, prompts, max_new_tokens=new_tokens, batch_size=batch_size, engine=engine)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(g.n_tokens for g in out)
    return {"seconds": round(seconds, 3), "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "device_memory_before": memory, "texts": [g.text for g in out]}


def device_memory() -> dict[str, float]:
    """The device's free and total memory and torch's allocated and reserved bytes, in GiB."""
    import torch

    free, total = torch.cuda.mem_get_info()
    return {"free_gib": round(free / 2**30, 1), "total_gib": round(total / 2**30, 1),
            "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 1),
            "reserved_gib": round(torch.cuda.memory_reserved() / 2**30, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--prompts", type=int, default=818, help="818: SAMSum's validation split")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64, help="padded engine's batch size")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip engines once this much has passed")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "the comparison needs a CUDA GPU"}))
        return 0
    started = time.monotonic()
    model, tok = build(args.model)
    lengths = samsum_lengths(args.prompts)
    prompts = prompts_for(lengths, model.config.vocab_size)
    memory = device_memory()  # before any engine
    spy = EngineSpy()
    results: dict[str, Any] = {}
    skipped = []
    for engine in args.engines.split(","):
        if time.monotonic() - started > args.budget_s:
            skipped.append(engine)
            continue
        try:
            results[engine] = timed(engine, model, tok, prompts, args.new_tokens, args.batch_size, spy)
        except Exception as err:  # a failing engine is a result too (continuous failed on every request once)
            results[engine] = {"error": f"{type(err).__name__}: {err}"[:500]}
        if spy.engines:  # the engine's profile, read before its KV cache goes
            results[engine]["profile"] = spy.breakdown()
        print(f"[{time.strftime('%H:%M:%S')}] {engine}: "
              f"{ {k: v for k, v in results[engine].items() if k != 'texts'} }", file=sys.stderr, flush=True)
        spy.release()  # whatever this engine left on the device goes before the next one runs
    reference = results.get("padded", {}).get("texts")
    for engine, result in results.items():
        texts = result.pop("texts", None)
        if reference and texts and engine != "padded":
            result["greedy_equal_to_padded"] = f"{sum(a == b for a, b in zip(texts, reference, strict=True))}/" \
                                               f"{len(texts)}"
        if "tokens_per_s" in result and "tokens_per_s" in results.get("padded", {}) and engine != "padded":
            result["speedup_over_padded"] = round(result["tokens_per_s"] / results["padded"]["tokens_per_s"], 2)
    if "tokens_per_s" in results.get("batched", {}) and "tokens_per_s" in results.get("continuous", {}):
        results["batched"]["speedup_over_continuous"] = round(
            results["batched"]["tokens_per_s"] / results["continuous"]["tokens_per_s"], 2)
    print(json.dumps({"benchmark": "generation_engines", "model": args.model, "device": torch.cuda.get_device_name(0),
                      "prompts": args.prompts, "prompt_tokens": {"mean": round(sum(lengths) / len(lengths), 1),
                                                                 "max": max(lengths)},
                      "new_tokens": args.new_tokens, "padded_batch_size": args.batch_size, "device_memory": memory,
                      **results,
                      "skipped": skipped, "wall_s": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
