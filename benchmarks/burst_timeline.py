"""Where an offline burst's wall time goes (issue 20): the GPU's busy and idle time, what launched each kernel,
and what the host was doing while the GPU ran dry.

    python benchmarks/burst_timeline.py [--model redpajama-3b] [--slots 512] [--burst 512] [--new-tokens 64]
                                        [--adapter none|merged|unmerged] [--out FILE]

The served engine (`create_engine("batched")`, warm-up included, the server's limits) over random weights of a
preset in bf16, run offline (`tunebench.serve.offline.run_offline`, no HTTP): one 8-token burst so every graph
exists, --repeats measured bursts (output tokens/s of the median, each one's wall, the garbage collections during
them, and the last one's step breakdown from the engine), then the same burst under
torch.profiler with the engine's phases marked (prefill, decode launch, reading tokens, compaction). From the
trace: the GPU's busy time (union of kernel intervals) against the burst's wall, GPU time by the phase that
launched it, and every idle gap of the GPU by the host phase that was running when the GPU went idle, so the
overhead that a burst's tokens/s pays is named rather than guessed. With --adapter, a LoRA adapter (r=16 on the
preset's targets, random) served merged into the weights or unmerged (requests name it). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import functools
import gc
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_checks import make_adapter, step_breakdown
from serve_throughput import build_tokenizer, prompt_texts

# The engine's phases, marked as profiler ranges (the innermost range names a moment: compaction runs inside
# reading, a prefill inside admission).
PHASES = {"_iteration": "iteration", "_admit": "admission", "_prefill": "prefill", "step": "decode launch",
          "_read_pending": "reading tokens", "_prune_running": "pruning"}
GAP_US = 20.0  # idle intervals shorter than this are launch jitter inside a graph, not the host's doing


def marked(engine: Any) -> contextlib.ExitStack:
    """Wrap the engine's phase methods (and compaction) in torch.profiler ranges for the `with` block."""
    import torch

    stack = contextlib.ExitStack()

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def ranged(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(label):
                return original(*args, **kwargs)

        setattr(owner, name, ranged)
        stack.callback(delattr, owner, name)  # the instance attribute goes; the class method shows again

    for name, label in PHASES.items():
        wrap(engine, name, label)
    wrap(engine.batch, "keep", "compaction")
    return stack


class GcClock:
    """Garbage collections while it is on: how many per generation and the seconds they took (gc.callbacks)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds[info["generation"]] += time.perf_counter() - self._started

    def report(self) -> dict[str, Any]:
        return {"collections": self.count, "ms": [round(1e3 * s, 1) for s in self.seconds]}


def analyse(trace: dict[str, Any], started_us: float, ended_us: float) -> dict[str, Any]:
    """GPU busy/idle and their attribution from a chrome trace (torch.profiler.export_chrome_trace)."""
    events = trace["traceEvents"]
    kernels = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                     key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    ranges = sorted(((e["ts"], e["ts"] + e["dur"], e["name"]) for e in events
                     if e.get("cat") == "user_annotation" and e["name"] in set(PHASES.values()) | {"compaction"}),
                    key=lambda r: r[0])
    starts = [r[0] for r in ranges]

    def phase_at(ts: float) -> str:
        # The innermost marked range holding ts (ranges nest; a range starts before the ones inside it).
        best, i = "outside the engine", bisect.bisect_right(starts, ts) - 1
        width = float("inf")
        for lo, hi, name in ranges[max(0, i - 12):i + 1]:
            if lo <= ts <= hi and hi - lo < width:
                best, width = name, hi - lo
        return best

    busy_by_phase: dict[str, float] = defaultdict(float)
    idle_by_phase: dict[str, float] = defaultdict(float)
    gaps: list[tuple[float, float, str, str]] = []
    busy, end = 0.0, started_us
    for k in kernels:
        lo, hi = k["ts"], k["ts"] + k["dur"]
        if hi <= started_us or lo >= ended_us:
            continue
        launched = launches.get(k.get("args", {}).get("correlation"))
        busy_by_phase[phase_at(launched) if launched is not None else "unknown"] += k["dur"]
        if lo > end:
            gap = lo - end
            if gap >= GAP_US:
                host = phase_at(end)
                idle_by_phase[host] += gap
                gaps.append((end - started_us, gap, host, phase_at(launched) if launched is not None else "?"))
        busy += max(0.0, hi - max(lo, end))
        end = max(end, hi)
    wall = ended_us - started_us
    tail = max(0.0, ended_us - end)
    gaps.sort(key=lambda g: -g[1])
    ms = lambda us: round(us / 1e3, 2)  # noqa: E731
    return {"wall_ms": ms(wall), "gpu_busy_ms": ms(busy), "gpu_idle_ms": ms(wall - busy),
            "gpu_busy_share": round(busy / wall, 3), "idle_after_last_kernel_ms": ms(tail),
            "kernel_ms_by_launching_phase": {k: ms(v) for k, v in sorted(busy_by_phase.items(), key=lambda x: -x[1])},
            "idle_ms_by_host_phase": {k: ms(v) for k, v in sorted(idle_by_phase.items(), key=lambda x: -x[1])},
            "idle_gaps": len(gaps), "idle_in_gaps_ms": ms(sum(g[1] for g in gaps)),
            "largest_gaps": [{"at_ms": ms(at), "ms": ms(d), "host": h, "next_launched_by": n}
                             for at, d, h, n in gaps[:10]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--slots", type=int, default=512)
    parser.add_argument("--burst", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--adapter", choices=("none", "merged", "unmerged"), default="none")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-prefill-tokens", type=int, default=None, help="padded prompt tokens per prefill launch "
                        "(tunebench serve --max-prefill-tokens; default the server's)")
    parser.add_argument("--waiting-served-ratio", type=float, default=None, help="tunebench serve "
                        "--waiting-served-ratio (default the server's)")
    parser.add_argument("--repeats", type=int, default=3, help="measured bursts (tokens/s from the median)")
    parser.add_argument("--gc-freeze", choices=("on", "off"), default="on", help="off: the runs collect over the "
                        "whole heap as before `tunebench.serve.engine_base.heap_frozen` (for the comparison)")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer directory (default: a BPE one built here)")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tunebench.serve.engine import EngineLimits, GenerationRequest, create_engine
    from tunebench.serve.loading import load_served
    from tunebench.serve.metrics import ServeMetrics
    from tunebench.serve.offline import run_offline
    from tunebench.serve.options import AdapterSpec, ModelOptions
    from tunebench.serve.sampling import SamplingParams

    if args.gc_freeze == "off":
        import tunebench.serve.offline as offline

        offline.heap_frozen = contextlib.nullcontext
    work = Path(tempfile.mkdtemp(prefix="burst-timeline-"))
    tokenizer = Path(args.tokenizer) if args.tokenizer else build_tokenizer(work / "tok")
    texts = prompt_texts(tokenizer)
    adapters = ()
    if args.adapter != "none":
        adapters = (AdapterSpec("lora", make_adapter(args.model, work / "lora")),)
    loaded = time.monotonic()
    served = load_served(ModelOptions(model=args.model, random_weights=True, tokenizer=str(tokenizer),
                                      device=args.device, adapters=adapters, merge=args.adapter == "merged"))
    limits = EngineLimits(max_batch=args.slots, max_queue=2048, request_timeout=60, max_sequence_tokens=256,
                          prefill_budget=args.max_prefill_tokens or EngineLimits.prefill_budget,
                          waiting_served_ratio=EngineLimits.waiting_served_ratio if args.waiting_served_ratio is None
                          else args.waiting_served_ratio)
    engine = create_engine("batched", served, limits, ServeMetrics("batched"))
    warm_s = time.monotonic() - loaded
    name = "lora" if args.adapter == "unmerged" else None
    prompts = [served.tokenizer(t)["input_ids"][:128] for t in texts]

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def burst(new_tokens: int) -> float:
        requests = [GenerationRequest(prompts[i % len(prompts)], SamplingParams(max_new_tokens=new_tokens,
                                                                                ignore_eos=True), name)
                    for i in range(args.burst)]
        started = time.monotonic()
        run_offline(engine, requests)
        sync()
        return time.monotonic() - started

    burst(8)
    clock = GcClock()
    gc.callbacks.append(clock)
    walls = []
    for _ in range(args.repeats):
        walls.append(burst(args.new_tokens))
        breakdown = step_breakdown(engine)  # the last burst's
    gc.callbacks.remove(clock)
    plain = sorted(walls)[len(walls) // 2]
    tokens = args.burst * args.new_tokens
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof, marked(engine), torch.profiler.record_function("burst"):
        profiled = burst(args.new_tokens)
    path = work / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    window = next(e for e in trace["traceEvents"] if e.get("name") == "burst" and e.get("cat") == "user_annotation")
    timeline = analyse(trace, window["ts"], window["ts"] + window["dur"])
    device = torch.cuda.get_device_name() if cuda else "cpu"
    line = {"benchmark": "burst_timeline", "model": args.model, "device": device,
            "adapter": args.adapter, "slots": args.slots, "max_prefill_tokens": engine.limits.prefill_budget,
            "waiting_served_ratio": engine.limits.waiting_served_ratio,
            "burst": args.burst, "new_tokens": args.new_tokens,
            "load_and_warmup_s": round(warm_s, 1), "output_tokens_per_s": round(tokens / plain, 1),
            "wall_s": round(plain, 3), "walls_s": [round(w, 3) for w in walls],
            "gc_during_bursts": clock.report(), "gc_freeze": args.gc_freeze,
            "profiled_wall_s": round(profiled, 3), "step_breakdown": breakdown,
            "timeline": timeline,
            "env": {k: v for k, v in os.environ.items() if k.startswith("TUNEBENCH_")}}
    text = json.dumps(line)
    print(text, flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
