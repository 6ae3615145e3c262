"""Which generation engine is faster on this GPU: padded batches or transformers' continuous batching?

    python benchmarks/generation_engines.py [--model redpajama-3b] [--prompts 64] [--new-tokens 128]

`tunebench.evaluate.generation.generate` has two engines: "padded" (`model.generate` on length-sorted,
left-padded batches) and "continuous" (`model.generate_batch`). `eval.engine: auto` uses padded until this
benchmark says continuous is faster. Random weights of a preset's architecture in bf16, prompts of mixed
lengths, greedy decoding (random weights rarely hit EOS; tokens/s counts the tokens actually generated).
Prints one JSON line: generated tokens/s per engine and whether the greedy outputs agree.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any


def build(model_name: str) -> tuple[Any, Any]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from tunebench.models.presets import PRESETS

    arch = dict(PRESETS[model_name].architecture)
    torch.manual_seed(0)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).to("cuda").eval()
    # A word-level tokenizer over numbers: prompts are token ids written out, no hub needed.
    vocab = {str(i): i for i in range(config.vocab_size)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="0"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="0", pad_token="0")
    return model, tok


def prompts_for(n: int, vocab: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(str(rng.randrange(1, vocab)) for _ in range(rng.randrange(32, 512))) for _ in range(n)]


def timed(engine: str, model: Any, tok: Any, prompts: list[str], new_tokens: int, batch_size: int) -> dict[str, Any]:
    import torch

    from tunebench.evaluate.generation import generate

    generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=batch_size, engine=engine)  # warm-up
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = generate(model, tok, prompts, max_new_tokens=new_tokens, batch_size=batch_size, engine=engine)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(g.n_tokens for g in out)
    return {"seconds": round(seconds, 3), "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "texts": [g.text for g in out]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="padded engine's batch size")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "continuous batching needs a CUDA GPU"}))
        return 0
    model, tok = build(args.model)
    prompts = prompts_for(args.prompts, model.config.vocab_size)
    results = {engine: timed(engine, model, tok, prompts, args.new_tokens, args.batch_size)
               for engine in ("padded", "continuous")}
    agree = sum(a == b for a, b in zip(results["padded"].pop("texts"), results["continuous"].pop("texts"),
                                       strict=True))
    faster = max(results, key=lambda e: results[e]["tokens_per_s"])
    print(json.dumps({"benchmark": "generation_engines", "model": args.model, "device": torch.cuda.get_device_name(0),
                      "prompts": args.prompts, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
                      **results, "greedy_outputs_equal": f"{agree}/{args.prompts}", "faster": faster}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
