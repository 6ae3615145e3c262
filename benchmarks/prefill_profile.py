"""Where a prefill's GPU time goes, and what compiled prefills do to the one-row decode step (issue 20).

    TUNEBENCH_PREFILL_COMPILE=0|1 python benchmarks/prefill_profile.py [--model redpajama-3b] [--slots 512]
        [--shapes 32x104,40x104] [--order prefill-first|decode-first] [--out FILE]

The served engine's own runner (`tunebench.serve.batched.BatchedEngine`, not offline: prefill graphs and the
compiled decode step as `tunebench serve` runs them), random weights of a preset in bf16, no server.
1. Warm-up as the server's (`BatchedEngine.warm_up`: three prefill shapes, then every decode bucket), or with
   --order decode-first the decode buckets before the prefill shapes (does the order in which torch.compile
   first sees the shapes decide the one-row step's code?).
2. GPU time per replay (CUDA events) of the 1-row and --slots-row decode graphs and of each --shapes prefill
   graph (rows x width, 100-token prompts), with the useful FLOP rate of the prefill.
3. torch.profiler over eager runs (the kernels a graph replays): the top kernels of each prefill shape and of
   the 1-row decode step, per run, with launches.
Prints one JSON line. (Kernel rows are named as decode_profile.py names them, ms_per_step and calls_per_step;
the -lead-12-/-lead-13- records, taken before that was shared, say ms and calls.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def gpu_ms(run: Any, repeats: int = 20) -> float:
    """GPU ms per call of `run` (CUDA events, after one untimed call)."""
    from decode_kernels import timed

    return round(timed(run, repeats), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--slots", type=int, default=512)
    parser.add_argument("--shapes", default="32x104,40x104")
    parser.add_argument("--prompt-tokens", type=int, default=100)
    parser.add_argument("--order", choices=("prefill-first", "decode-first"), default="prefill-first")
    parser.add_argument("--no-kernels", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    import math

    import torch
    from decode_profile import profile_kernels, set_lengths
    from generation_engines import build

    from tunebench.serve import graphs
    from tunebench.serve.batched import BatchedEngine
    from tunebench.serve.loading import ServedModel
    from tunebench.serve.metrics import ServeMetrics
    from tunebench.serve.requests import EngineLimits

    model, tok = build(args.model)
    flop_per_token = 2 * sum(p.numel() for n, p in model.named_parameters()
                             if not any(k in n for k in ("embed_in", "wte", "embed_tokens", "embed_out", "lm_head")))
    served = ServedModel(model=model, tokenizer=tok, model_id="profile", context_length=256,
                         dtype=str(model.dtype), device=str(model.device))
    limits = EngineLimits(max_batch=args.slots, max_queue=0, request_timeout=math.inf, max_sequence_tokens=256)
    engine = BatchedEngine(served, limits, ServeMetrics("batched"))
    runner = engine.runner
    started = time.perf_counter()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",") if s]
    scratch = engine.cache.scratch

    def prefill_host(rows: int, width: int, prompt: int) -> Any:
        pad = width - prompt
        ids = torch.randint(1, 1000, (rows, width))
        pos = torch.tensor([[0] * pad + list(range(prompt))] * rows)
        cols = torch.tensor([[scratch] * pad + list(range(prompt))] * rows)
        return torch.stack([ids, pos, cols])

    with torch.inference_mode():
        if args.order == "decode-first":  # the server's warm-up with its two halves swapped
            for rows in sorted({runner.batch_bucket(n) for n in range(1, args.slots + 1)}):
                runner.step(rows, graphs.MIN_WIDTH, None, {})
            runner.release(0, args.slots)
            for count, longest in ((1, 64), (graphs.PREFILL_ROW_STEP, 64), (2 * graphs.PREFILL_ROW_STEP, 96)):
                rows, width = runner.prefill_shape(count, longest)
                runner.prefill(prefill_host(rows, width, 0), [0] * rows, None, {})
            torch.cuda.synchronize()
        else:
            engine.warm_up()
        warm_s = round(time.perf_counter() - started, 1)
        log(f"warm-up ({args.order}, prefill compile {runner.compile_prefill}) in {warm_s} s")
        result: dict[str, Any] = {"benchmark": "prefill_profile", "model": args.model,
                                  "device": torch.cuda.get_device_name(0), "order": args.order,
                                  "prefill_compile": runner.compile_prefill, "decode_compile": runner.compiler.mode,
                                  "compile_errors": runner.compiler.errors, "warmup_s": warm_s,
                                  "gflop_per_token": round(flop_per_token / 1e9, 2)}
        decode: dict[str, Any] = {}
        set_lengths(runner, [args.prompt_tokens + 4] * args.slots)
        for rows in (1, args.slots):
            decode[str(rows)] = gpu_ms(lambda rows=rows: runner.step(rows, 0, None, {}))
        result["decode_ms"] = decode
        log(f"decode graph ms: {decode}")
        prefill: dict[str, Any] = {}
        hosts = {shape: prefill_host(*shape, args.prompt_tokens) for shape in shapes}
        for (rows, width), host in hosts.items():
            ms = gpu_ms(lambda host=host, rows=rows: runner.prefill(host, list(range(rows)), None, {}))
            prefill[f"{rows}x{width}"] = {"ms": ms, "ms_per_prompt": round(ms / rows, 3), "useful_tflops":
                                          round(rows * args.prompt_tokens * flop_per_token / ms / 1e9, 1)}
        result["prefill"] = prefill
        log(f"prefill graph ms: {prefill}")
        if not args.no_kernels:
            runner.use_graphs = False  # eager runs: the kernels a graph replays, one by one
            tables: dict[str, Any] = {}
            for (rows, width), host in hosts.items():
                tables[f"prefill {rows}x{width}"] = profile_kernels(
                    lambda host=host, rows=rows: runner.prefill(host, list(range(rows)), None, {}))
            set_lengths(runner, [args.prompt_tokens + 4] * args.slots)
            tables["decode 1"] = profile_kernels(lambda: runner.forward(1, 0, {}) if runner.flex
                                              else runner.forward(1, 128, {}))
            runner.use_graphs = True
            result["kernels"] = tables
            for name, table in tables.items():
                log(f"{name}: " + "; ".join(f"{k['kernel'][:60]} {k['ms_per_step']} ms x{k['calls_per_step']}"
                                            for k in table))
    from torch._dynamo.utils import counters

    result["dynamo_graphs"] = counters["stats"]["unique_graphs"]
    result["env"] = {k: v for k, v in os.environ.items() if k.startswith("TUNEBENCH_")}
    print(json.dumps(result), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
