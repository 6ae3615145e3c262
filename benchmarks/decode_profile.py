"""Where a decode step's time goes on the GPU: the batched engine's step alone, per batch size and attention kernel.

    python benchmarks/decode_profile.py [--model redpajama-3b] [--slots 256] [--width 192]

The engine's own model runner (`tunebench.serve.graphs.DecodeRunner`) over its slot KV cache, random weights
of a preset's architecture in bf16, no server and no scheduler:
1. GPU time per decode step (CUDA-graph replay timed with CUDA events) at 1, 32, 128 and --slots rows over
   --width columns, with torch's default SDPA kernel choice, each SDPA backend that takes the shape
   (efficient, cudnn, math), and transformers' flex_attention (FlexAttention with the engine's dense mask);
   beside each, the step's memory-bandwidth bound (weights + the keys and values it reads, at --bandwidth).
2. torch.profiler over eager steps at --slots rows: the CUDA kernels that take the most time, per step.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation_engines import build

BACKENDS = ("default", "efficient", "cudnn", "math")


def step_ms(runner: Any, rows: int, width: int, repeats: int = 20) -> float:
    import torch

    runner.step(rows, width, None, {})  # captures the graph on first use
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        runner.step(rows, width, None, {})
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / repeats, 3)


def variant(runner: Any, name: str, rows_list: list[int], width: int) -> dict[str, Any]:
    """Step times with one attention choice; a failure is recorded, not raised."""
    import torch

    runner.graphs.clear()
    runner.pool = torch.cuda.graph_pool_handle()  # graphs of a fresh pool: the old pool's graphs are gone
    runner.use_graphs = True
    out: dict[str, Any] = {}
    try:
        for rows in rows_list:
            out[str(rows)] = step_ms(runner, rows, width)
            if not runner.use_graphs:
                return {"error": "graph capture failed (see the log)"}
    except Exception as err:  # a backend that does not take this shape
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    return out


def kernel_table(runner: Any, rows: int, width: int, steps: int = 3, top: int = 12) -> list[dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    runner.use_graphs = False
    runner.forward(rows, width, {})
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            runner.forward(rows, width, {})
        torch.cuda.synchronize()
    runner.use_graphs = True
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    total = sum(e.device_time_total for e in events) or 1
    events.sort(key=lambda e: -e.device_time_total)
    return [{"kernel": e.key[:90], "ms_per_step": round(e.device_time_total / 1e3 / steps, 3),
             "share": round(e.device_time_total / total, 3), "calls_per_step": e.count // steps}
            for e in events[:top]] + [{"kernel": "(all)", "ms_per_step": round(total / 1e3 / steps, 3)}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--width", type=int, default=192, help="attention columns (the engine's width bucket)")
    parser.add_argument("--bandwidth", type=float, default=4.3e12, help="bytes/s for the bound")
    parser.add_argument("--no-flex", action="store_true")
    args = parser.parse_args(argv)
    import torch

    started = time.monotonic()
    model, tok = build(args.model)
    with torch.inference_mode():  # as the engine's thread runs
        measure(args, model, tok, started)
    return 0


def measure(args: argparse.Namespace, model: Any, tok: Any, started: float) -> dict[str, Any]:
    import torch

    from tunebench.serve.graphs import sdpa_backends
    from tunebench.serve.offline import offline_engine

    engine = offline_engine(model, tok, longest=max(256, args.width), slots=args.slots)
    runner, cache = engine.runner, engine.cache
    rows_list = sorted({1, 32, 128, engine.slots})
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    per_column = cache.all_keys[:, 0, :, 0].numel() * 2 * cache.all_keys.element_size()  # keys + values, all layers
    bound = {str(r): round(1e3 * (weights + r * args.width * per_column) / args.bandwidth, 3) for r in rows_list}
    results: dict[str, Any] = {}
    for name in BACKENDS:
        runner.sdpa_backends = sdpa_backends("" if name == "default" else name)
        results[name] = variant(runner, name, rows_list, args.width)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {results[name]}", file=sys.stderr, flush=True)
    runner.sdpa_backends = []
    try:
        kernels: Any = kernel_table(runner, engine.slots, args.width)
    except Exception as err:
        kernels = {"error": f"{type(err).__name__}: {err}"[:300]}
    line = {"benchmark": "decode_profile", "model": args.model, "device": torch.cuda.get_device_name(0),
            "slots": engine.slots, "width": args.width, "step_ms_by_rows": results,
            "bandwidth_bound_ms_by_rows": bound, "weights_gb": round(weights / 1e9, 2),
            "kernels_eager_at_slots": kernels, "wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(line), flush=True)  # before FlexAttention, whose compilation may outlast the call
    if not args.no_flex:
        try:
            model.set_attn_implementation("flex_attention")
            runner.additive_dtype = cache.all_keys.dtype  # flex adds the mask to the scores
            flex = variant(runner, "flex", rows_list, args.width)
        except Exception as err:
            flex = {"error": f"{type(err).__name__}: {err}"[:300]}
        print(json.dumps({"benchmark": "decode_profile", "attention": "flex_attention (dense mask)",
                          "width": args.width, "step_ms_by_rows": flex,
                          "wall_s": round(time.monotonic() - started, 1)}), flush=True)
    return line


if __name__ == "__main__":
    sys.exit(main())
