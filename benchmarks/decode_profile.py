"""Where a decode step's time goes on the GPU: the batched engine's step alone, per batch size and attention kernel.

    python benchmarks/decode_profile.py [--model redpajama-3b] [--slots 256] [--width 192] [--backends default]

The engine's own model runner (`tunebench.serve.graphs.DecodeRunner`) over its slot KV cache, random weights
of a preset's architecture in bf16, no server and no scheduler. Every row holds `--width` tokens (its next
position is width - 1), so SDPA over the width bucket and FlexAttention over each row's own blocks read the
same columns; "flex-ragged" gives the rows lengths spread over the upper half of the width (a burst's mix),
which SDPA still pays the whole width for.
1. GPU time per decode step (CUDA-graph replay timed with CUDA events) at 1, 32, 128 and --slots rows, with
   FlexAttention (`tunebench.serve.decode_attention`, the engine's default on CUDA) and with SDPA over the
   width bucket for each --backends entry (default: torch's own choice; efficient, cudnn, math); beside
   each, the step's memory-bandwidth bound (weights + the keys and values it must read, at --bandwidth).
2. torch.profiler over eager steps at --kernel-rows rows (default: --slots), FlexAttention and SDPA: the CUDA
   kernels that take the most time, per step, and how many kernels a step launches.
3. With --compile (e.g. off,layers,model: `tunebench.serve.compiled`, TUNEBENCH_DECODE_COMPILE), the SDPA
   default and FlexAttention step times and kernel tables again for each compile mode, with its compile
   seconds (the first call of each step kind); a mode that starts past --deadline-s is skipped.
4. With --kv-dtype (e.g. auto,fp8: TUNEBENCH_KV_CACHE_DTYPE, `tunebench.serve.kvcache`), all of the above once
   per KV cache dtype, each over an engine of its own; the bandwidth bound counts the cache's own bytes.
Prints one JSON line (per --kv-dtype entry).
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

BACKENDS = ("default", "efficient", "cudnn", "math")  # SDPA over the width bucket


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
            if name == "flex" and not runner.flex:
                return {"error": f"FlexAttention given up: {runner.flex_error}"}
    except Exception as err:  # a backend that does not take this shape
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    return out


def kernel_table(runner: Any, rows: int, width: int, steps: int = 3, top: int = 12) -> list[dict[str, Any]]:
    """The top kernels of eager steps (the kernels a graph replays), then "(all)": GPU ms and launches."""
    runner.use_graphs = False
    try:
        return profile_kernels(lambda: runner.forward(rows, width, {}), steps, top)
    finally:
        runner.use_graphs = True


def profile_kernels(run: Any, runs: int = 3, top: int = 12) -> list[dict[str, Any]]:
    """torch.profiler over `runs` calls of `run` (after one unprofiled): the top CUDA kernels, then "(all)"."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            run()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0]
    total = sum(e.device_time_total for e in events) or 1
    events.sort(key=lambda e: -e.device_time_total)
    return [{"kernel": e.key[:90], "ms_per_step": round(e.device_time_total / 1e3 / runs, 3),
             "share": round(e.device_time_total / total, 3), "calls_per_step": e.count // runs}
            for e in events[:top]] + [{"kernel": "(all)", "ms_per_step": round(total / 1e3 / runs, 3),
                                       "calls_per_step": sum(e.count for e in events) // runs}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--width", type=int, default=192, help="attention columns (the engine's width bucket)")
    parser.add_argument("--bandwidth", type=float, default=4.3e12, help="bytes/s for the bound")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="SDPA backends to time, comma-separated")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON line to this file")
    parser.add_argument("--flex-variants", default="", help="also time FlexAttention variants (ragged rows): "
                        "';'-separated BLOCK[:JSON kernel options], e.g. '64;32:{\"num_warps\": 2}'")
    parser.add_argument("--rows", default="", help="row counts to time, comma-separated (default 1,32,128,slots)")
    parser.add_argument("--kernel-rows", default="", help="row counts for kernel tables (default: --slots)")
    parser.add_argument("--compile", default="", help="compile modes to time besides the env's, e.g. off,layers")
    parser.add_argument("--deadline-s", type=float, default=1e9, help="skip compile modes starting past this")
    parser.add_argument("--kv-dtype", default="", help="KV cache dtypes to measure in turn, e.g. auto,fp8 "
                        "(TUNEBENCH_KV_CACHE_DTYPE; default: the environment's)")
    args = parser.parse_args(argv)
    import gc
    import os

    import torch

    started = time.monotonic()
    model, tok = build(args.model)
    for kv_dtype in [d.strip() for d in args.kv_dtype.split(",") if d.strip()] or [None]:
        if kv_dtype is not None:
            os.environ["TUNEBENCH_KV_CACHE_DTYPE"] = kv_dtype
        with torch.inference_mode():  # as the engine's thread runs
            line = measure(args, model, tok, started)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
        gc.collect()  # the engine and its graphs are gone (cycles included): the next dtype's cache gets the memory
        torch.cuda.empty_cache()
    return 0


def set_lengths(runner: Any, lengths: list[int]) -> None:
    """Row i holds lengths[i] tokens: its next input goes to position and column lengths[i] - 1 (the step is
    replayed without advancing, so every replay reads the same columns)."""
    import torch

    runner.start_rows(0, [n - 1 for n in lengths], torch.ones(len(lengths), dtype=torch.long))


def measure(args: argparse.Namespace, model: Any, tok: Any, started: float) -> dict[str, Any]:
    import random

    import torch

    from tunebench.serve.graphs import sdpa_backends
    from tunebench.serve.offline import offline_engine

    engine = offline_engine(model, tok, longest=max(256, args.width), slots=args.slots)
    runner, cache = engine.runner, engine.cache
    flex = runner.decode_attention  # None if torch could not build it here (runner.flex_error says why)
    wanted = [int(r) for r in args.rows.split(",") if r] or [1, 32, 128, engine.slots]
    rows_list = sorted(r for r in set(wanted) if r <= engine.slots)
    kernel_rows = [int(r) for r in args.kernel_rows.split(",") if r] or [engine.slots]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    per_column = cache.all_keys[:, 0, :, 0].numel() * 2 * cache.all_keys.element_size()  # keys + values, all layers
    rng = random.Random(0)
    ragged = [rng.randrange(args.width // 2, args.width) + 1 for _ in range(engine.slots)]

    def bound(lengths: list[int]) -> dict[str, float]:
        return {str(r): round(1e3 * (weights + sum(lengths[:r]) * per_column) / args.bandwidth, 3)
                for r in rows_list}

    results: dict[str, Any] = {}
    set_lengths(runner, [args.width] * engine.slots)
    runner.decode_attention = None
    for name in [b for b in args.backends.split(",") if b]:
        runner.sdpa_backends = sdpa_backends("" if name == "default" else name)
        results[f"sdpa-{name}"] = variant(runner, name, rows_list, args.width)
        log(f"sdpa {name}: {results[f'sdpa-{name}']}")
    runner.sdpa_backends = []
    kernels: dict[str, Any] = {}
    for rows in kernel_rows:
        kernels[f"sdpa@{rows}"] = safe_table(runner, rows, args.width)
    if flex is not None:
        runner.decode_attention, runner._flex_checked = flex, False
        results["flex"] = variant(runner, "flex", rows_list, args.width)
        log(f"flex: {results['flex']}")
        for rows in kernel_rows:
            kernels[f"flex@{rows}"] = safe_table(runner, rows, args.width)
    compiled = compile_modes(args, runner, flex, rows_list, kernel_rows, results, kernels, started)
    if flex is not None:
        set_lengths(runner, ragged)
        results["flex-ragged"] = variant(runner, "flex", rows_list, args.width)
        log(f"flex, ragged lengths: {results['flex-ragged']}")
        for spec in [v for v in args.flex_variants.split(";") if v.strip()]:
            results[f"flex-ragged {spec}"] = flex_variant(runner, spec, rows_list, args.width)
            log(f"flex variant {spec}: {results[f'flex-ragged {spec}']}")
    line = {"benchmark": "decode_profile", "model": args.model, "device": torch.cuda.get_device_name(0),
            "slots": engine.slots, "width": args.width, "kv_dtype": str(cache.all_keys.dtype).removeprefix("torch."),
            "decode_kernel": getattr(flex, "kernel", None), "step_ms_by_rows": results,
            "flex_error": runner.flex_error, "kv_block": 32,
            "ragged_mean_length": round(sum(ragged) / len(ragged), 1),
            "bandwidth_bound_ms_by_rows": {"full-width": bound([args.width] * engine.slots),
                                           "ragged": bound(ragged)},
            "weights_gb": round(weights / 1e9, 2), "kernels_eager": kernels, "compile": compiled,
            "wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(line), flush=True)
    return line


def compile_modes(args: argparse.Namespace, runner: Any, flex: Any, rows_list: list[int], kernel_rows: list[int],
                  results: dict[str, Any], kernels: dict[str, Any], started: float) -> dict[str, Any]:
    """Step times and kernel tables per --compile mode (SDPA default, then FlexAttention, full-width rows);
    the runner's own mode (from the environment) is put back after."""
    from tunebench.serve.compiled import DecodeCompiler

    own = runner.compiler
    info: dict[str, Any] = {"env_mode": own.mode}
    for mode in [m for m in args.compile.split(",") if m]:
        if time.monotonic() - started > args.deadline_s:
            info[mode] = "skipped: past --deadline-s"
            continue
        set_lengths(runner, [args.width] * runner.cache.slots)
        runner.compiler = DecodeCompiler(runner.model, runner.cache, mode)
        runner.decode_attention, runner.sdpa_backends = None, []
        results[f"{mode}/sdpa-default"] = variant(runner, "default", rows_list, args.width)
        for rows in kernel_rows:
            kernels[f"{mode}/sdpa@{rows}"] = safe_table(runner, rows, args.width)
        if flex is not None:
            runner.decode_attention, runner._flex_checked = flex, False
            results[f"{mode}/flex"] = variant(runner, "flex", rows_list, args.width)
            for rows in kernel_rows:
                kernels[f"{mode}/flex@{rows}"] = safe_table(runner, rows, args.width)
        info[mode] = {"first_call_s": runner.compiler.first_s, "compile_s": round(runner.compiler.compile_s, 1),
                      "graphs": runner.compiler.compiles, "error": runner.compiler.error,
                      "capture_s": round(runner.capture_s, 1)}
        log(f"compile {mode}: {info[mode]}; sdpa {results[f'{mode}/sdpa-default']}; flex {results.get(f'{mode}/flex')}")
    runner.compiler = own
    runner.decode_attention = flex
    return info


def flex_variant(runner: Any, spec: str, rows_list: list[int], width: int) -> Any:
    """FlexAttention with another block size and/or Triton kernel options (`spec`: BLOCK[:JSON])."""
    import os

    from tunebench.serve import decode_attention as da

    block, _, options = spec.partition(":")
    try:
        os.environ["TUNEBENCH_FLEX_OPTIONS"] = options or "{}"
        runner.decode_attention = da.DecodeAttention(runner.model, runner.inputs[1], runner.cache.max_len,
                                                     block=int(block))
        runner._flex_checked = False
        return variant(runner, "flex", rows_list, width)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    finally:
        os.environ.pop("TUNEBENCH_FLEX_OPTIONS", None)


def safe_table(runner: Any, rows: int, width: int) -> Any:
    try:
        return kernel_table(runner, rows, width)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"[:300]}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
