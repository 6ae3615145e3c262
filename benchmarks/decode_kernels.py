"""Decode attention kernels side by side on the GPU, alone and inside the engine's offline burst.

    python benchmarks/decode_kernels.py [--model redpajama-3b] [--rows 1,32,128,256,512] [--slots 256,512]
        [--kv-dtype auto,fp8]

1. One layer's decode attention over a slot cache of the model's shape (bf16, rows of ragged lengths drawn
   from 100..164 tokens, a 100-in/64-out burst's mix): the Triton kernel (`tunebench.serve.triton_decode`),
   compiled FlexAttention with the engine's block mask, and SDPA over the width bucket. Per rows count: ms
   per call (CUDA events, 50 calls), the bytes each must read at least (every row's own keys and values) over
   that time, and the largest difference from an fp32 reference. With fp8 in --kv-dtype, the Triton kernel
   also over the same cache quantized to float8_e4m3fn ("triton fp8": TUNEBENCH_KV_CACHE_DTYPE=fp8's cache,
   half the bytes to read), its difference from an fp32 reference over the dequantized FP8 cache (the
   kernel's own error) and from the bf16 cache's reference (the kernel's plus FP8's).
2. The engine offline (`tunebench.serve.offline`, no HTTP) on a burst of --burst requests of 100 random
   tokens, 64 new tokens each (greedy, no stop), per decode kernel, per --slots and per --kv-dtype (the
   engine's TUNEBENCH_KV_CACHE_DTYPE): output tokens per second over the run (graph captures done in a
   warm-up burst first), the engine's step profile, and how many completions are identical to the first
   burst's (with --kernels triton --slots 512 --kv-dtype auto,fp8: FP8's greedy completions against bf16's).
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


def timed(fn: Any, repeats: int = 50) -> float:
    import torch

    fn()
    if not torch.cuda.is_available():  # a CPU smoke run (Triton's interpreter): wall time
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1e3
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def kernels_alone(model: Any, rows_list: list[int], columns: int, device: str = "cuda",
                  variants: tuple[str, ...] = (), kv_dtypes: tuple[str, ...] = ("auto",)) -> dict[str, Any]:
    import os
    import random

    import torch

    from tunebench.serve import decode_attention as da
    from tunebench.serve.kvcache import quantize
    from tunebench.serve.triton_decode import decode_attention as triton_attention

    config = model.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads) or heads
    dim = config.hidden_size // heads
    slots = max(rows_list)
    rng = random.Random(0)
    lengths = [rng.randrange(100, 165) for _ in range(slots)]
    keys, values = torch.randn(2, slots, kv_heads, columns, dim, device=device, dtype=torch.bfloat16).unbind(0)
    keys8, values8 = (quantize(t) if "fp8" in kv_dtypes else None for t in (keys, values))
    positions = torch.tensor([n - 1 for n in lengths], device=device)
    group = heads // kv_heads
    flex = da.DecodeAttention(torch.nn.Module(), positions, columns, kernel="flex")
    module = torch.nn.Module()
    out: dict[str, Any] = {}
    for rows in rows_list:
        query = torch.randn(rows, 1, heads, dim, device=device, dtype=torch.bfloat16).transpose(1, 2)
        row_lengths = torch.tensor(lengths[:rows], dtype=torch.int32, device=device)
        width = -(-max(lengths[:rows]) // 64) * 64
        bool_mask = (torch.arange(width, device=device) < row_lengths[:, None].long())[:, None, None]
        scale = dim ** -0.5
        mask = flex.mask(rows)
        def sdpa(q: Any = query, m: Any = bool_mask, w: int = width, n: int = rows, scale: float = scale) -> Any:
            k, v = keys[:n, :, :w], values[:n, :, :w]
            if group > 1:
                k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=scale).transpose(1, 2)

        runs = {
            "triton": lambda q=query, r=row_lengths, c=scale: triton_attention(q, keys, values, r, c),
            "flex": lambda q=query, m=mask, c=scale: da.attention(module, q, keys, values, m, scaling=c)[0],
            "sdpa-width": sdpa,
        }
        for spec in variants:  # the Triton kernel's variants (TUNEBENCH_TRITON_DECODE)
            def run(q: Any = query, r: Any = row_lengths, c: float = scale, spec: str = spec) -> Any:
                os.environ["TUNEBENCH_TRITON_DECODE"] = spec
                try:
                    return triton_attention(q, keys, values, r, c)
                finally:
                    os.environ.pop("TUNEBENCH_TRITON_DECODE")
            runs[f"triton {spec}"] = run
        if "auto" not in kv_dtypes:
            runs = {}
        needed = sum(lengths[:rows]) * kv_heads * dim * 2 * keys.element_size()  # keys + values
        ref = reference(query, keys, values, lengths[:rows], scale)
        entry: dict[str, Any] = {}
        for name, fn in runs.items():
            try:
                ms = timed(fn)
                diff = (fn().float() - ref).abs().max().item()
                entry[name] = {"ms": round(ms, 4), "tb_per_s": round(needed / ms / 1e9, 2), "max_abs_diff": diff}
            except Exception as err:
                entry[name] = {"error": f"{type(err).__name__}: {err}"[:200]}
        if keys8 is not None:  # the FP8 cache: half the bytes; errors against both references
            try:
                def fp8(q: Any = query, r: Any = row_lengths, c: float = scale) -> Any:
                    return triton_attention(q, keys8, values8, r, c)

                ms = timed(fp8)
                got = fp8().float()
                own = reference(query, keys8, values8, lengths[:rows], scale)  # fp32 over the dequantized cache
                entry["triton fp8"] = {"ms": round(ms, 4), "tb_per_s": round(needed / 2 / ms / 1e9, 2),
                                       "max_abs_diff": (got - own).abs().max().item(),
                                       "max_abs_diff_vs_bf16_cache": (got - ref).abs().max().item()}
                if "triton" in entry and "ms" in entry["triton"]:
                    entry["triton fp8"]["speedup_vs_bf16"] = round(entry["triton"]["ms"] / ms, 3)
            except Exception as err:
                entry["triton fp8"] = {"error": f"{type(err).__name__}: {err}"[:200]}
        out[str(rows)] = entry
        print(f"[{time.strftime('%H:%M:%S')}] attention alone, {rows} rows: {entry}", file=sys.stderr, flush=True)
    return out


def reference(query: Any, keys: Any, values: Any, lengths: list[int], scale: float) -> Any:
    import torch

    heads = query.shape[1]
    outs = []
    for i, n in enumerate(lengths):
        k = keys[i, :, :n].float().repeat_interleave(heads // keys.shape[1], 0)
        v = values[i, :, :n].float().repeat_interleave(heads // keys.shape[1], 0)
        w = torch.softmax((query[i, :, 0].float()[:, None] * k).sum(-1) * scale, -1)
        outs.append((w[..., None] * v).sum(1))
    return torch.stack(outs)[:, None]  # (rows, 1, heads, dim)


def burst(model: Any, tok: Any, kernel: str, slots: int, count: int, prompt_len: int, new: int,
          kv_dtype: str = "auto") -> dict[str, Any]:
    import os
    import random

    import torch

    from tunebench.serve.offline import offline_engine, run_offline
    from tunebench.serve.requests import GenerationRequest
    from tunebench.serve.sampling import SamplingParams

    os.environ["TUNEBENCH_DECODE_ATTENTION"] = kernel
    os.environ["TUNEBENCH_KV_CACHE_DTYPE"] = kv_dtype
    engine = offline_engine(model, tok, longest=prompt_len + new + 1, slots=slots)
    rng = random.Random(1)
    vocab = model.config.vocab_size
    requests = [GenerationRequest([rng.randrange(1, vocab) for _ in range(prompt_len)],
                                  SamplingParams(max_new_tokens=new, ignore_eos=True)) for _ in range(count)]
    run_offline(engine, requests)  # warm-up: graphs and kernels
    torch.cuda.synchronize()
    started = time.perf_counter()
    completions = run_offline(engine, requests)
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    engine.profile.every = 0
    profile = engine.profile.report()
    tokens = sum(c.generated_tokens for c in completions)
    runner = engine.runner
    line = {"kernel": getattr(runner.decode_attention, "kernel", "sdpa"), "slots": engine.slots,
            "kv_dtype": str(engine.cache.all_keys.dtype).removeprefix("torch."),
            "kv_cache_gib": round(2 * engine.cache.all_keys.nbytes / 2**30, 2),
            "decode_compile": runner.compiler.mode, "compile_error": runner.compiler.error,
            "wall_s": round(wall, 3), "output_tokens_per_s": round(tokens / wall, 1), "profile": profile,
            "fallback": runner.flex_error, "ids": [[t.id for t in c.tokens] for c in completions]}
    del engine
    torch.cuda.empty_cache()
    print(f"[{time.strftime('%H:%M:%S')}] burst {kernel} x {slots} slots, {kv_dtype} cache: "
          f"{line['output_tokens_per_s']} tok/s; {profile}", file=sys.stderr, flush=True)
    return line


def fastest(alone: dict[str, Any], variants: tuple[str, ...], rows: list[int]) -> str | None:
    """The variant with the least time summed over `rows` (None if none ran)."""
    times = {v: sum(alone.get(str(r), {}).get(f"triton {v}", {}).get("ms", float("inf")) for r in rows)
             for v in variants}
    return min((t, v) for v, t in times.items())[1] if times and min(times.values()) < float("inf") else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--rows", default="1,32,128,256,512")
    parser.add_argument("--columns", type=int, default=256, help="cache columns per slot (kernel test)")
    parser.add_argument("--kernels", default="triton,flex", help="decode kernels for the burst (first: reference)")
    parser.add_argument("--slots", default="256,512")
    parser.add_argument("--burst", type=int, default=512)
    parser.add_argument("--skip-alone", action="store_true")
    parser.add_argument("--kv-dtype", default="auto", help="KV cache dtypes, comma-separated: auto (bf16), fp8 "
                        "(TUNEBENCH_KV_CACHE_DTYPE); the first is the bursts' reference")
    parser.add_argument("--variants", default="tiles:64:4,tiles:32:2,tiles:128:8,lanes:16:2,lanes:32:4,lanes:32:2,"
                        "lanes:64:4,lanes:64:8", help="Triton kernel variants timed alone (KERNEL:TILE:WARPS); the "
                        "fastest over the largest two row counts runs the bursts")
    args = parser.parse_args(argv)
    import os

    import torch

    started = time.monotonic()
    model, tok = build(args.model)
    rows_list = [int(r) for r in args.rows.split(",")]
    kv_dtypes = tuple(d.strip() for d in args.kv_dtype.split(",") if d.strip())
    with torch.inference_mode():
        variants = tuple(v for v in args.variants.split(",") if v)
        alone = {} if args.skip_alone else kernels_alone(model, rows_list, args.columns, variants=variants,
                                                         kv_dtypes=kv_dtypes)
        best = fastest(alone, variants, rows_list[-2:])
        if best:
            os.environ["TUNEBENCH_TRITON_DECODE"] = best
        bursts = [burst(model, tok, k, int(s), args.burst, 100, 64, kv_dtype=d)
                  for s in args.slots.split(",") for k in args.kernels.split(",") for d in kv_dtypes]
    first = bursts[0]["ids"]
    for b in bursts:
        same = sum(a == c for a, c in zip(b.pop("ids"), first, strict=True))
        b["identical_to_first"], b["identical_fraction"] = same, round(same / len(first), 4)
    print(json.dumps({"benchmark": "decode_kernels", "model": args.model, "device": torch.cuda.get_device_name(0),
                      "attention_alone": alone, "triton_variant": best, "bursts_100in_64out": bursts,
                      "burst_requests": args.burst, "kv_dtypes": list(kv_dtypes),
                      "decode_compile": os.environ.get("TUNEBENCH_DECODE_COMPILE", "off (offline default)"),
                      "wall_s": round(time.monotonic() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
