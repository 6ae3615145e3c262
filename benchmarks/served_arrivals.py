"""When a served burst's requests reach the engine (issue 20): `tunebench serve --frontend split` with the engine
process writing a line per batch of requests it reads (TUNEBENCH_ENGINE_ARRIVALS), driven by the serving
benchmarks' closed-loop burst (every request at once, `ignore_eos`, `burst_client.fire`). For each tokenization
mode, one server and `--repeat` rounds of measured bursts after a warm-up one, each round one burst per
`--connections` kind (warm: opened before the clock starts; cold: inside it): the wall, output tokens/s, the
engine's idle time (the burst's wall minus its seconds by phase, from /metrics), and, counted from the first send,
when the first request, the half-way one and the last one reached the engine process, and in how many reads.
Modes are values of TUNEBENCH_TOKENIZE_INLINE_CHARS: 0 tokenizes every prompt in the front end's tokenizing
thread, 8192 (the default) short prompts on its event loop. Bursts alternate between servers only across runs of
the script; within one, a server's bursts run back to back. One JSON line with every burst and the medians per
mode and connection kind:

    python3 benchmarks/served_arrivals.py --slots 512 --burst 512 --frontends 4 --out $OUT        # the GPU host
    python benchmarks/served_arrivals.py --model DIR --tokenizer DIR --device cpu --frontends 1   # a laptop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from burst_client import CONNECTIONS, engine_counters, fire, schedule
from serve_report import log
from serve_throughput import Session, build_tokenizer, prompt_texts


def arrivals(trace: Path, start: float, end: float) -> dict[str, Any]:
    """First, half-way and last request's arrival (ms after `start`) among the trace lines in [start, end]."""
    reads = [json.loads(line) for line in trace.read_text().splitlines()]
    reads = [r for r in reads if start <= r["t"] <= end]
    if not reads:
        return {"reads": 0}
    total, seen, half = sum(r["submits"] for r in reads), 0, None
    for r in reads:
        seen += r["submits"]
        if half is None and seen >= total / 2:
            half = r["t"]
    ms = lambda t: round((t - start) * 1000, 1)  # noqa: E731
    return {"first_ms": ms(reads[0]["t"]), "half_ms": ms(half), "last_ms": ms(reads[-1]["t"]), "reads": len(reads),
            "requests": total}


def measured_burst(url: str, texts: list[str], count: int, new_tokens: int, trace: Path,
                   connections: str) -> dict[str, Any]:
    before = engine_counters(url)
    wall, tokens, ok, start = asyncio.run(fire(url, texts, count, new_tokens, None, connections))
    end = time.time()  # the trace's clock: from the first send (after any connecting) to now
    plan = schedule(before, engine_counters(url), wall)
    return {"ok": ok, "wall_s": round(wall, 3), "output_tokens_per_s": round(tokens / wall, 1),
            "idle_s": plan["engine_s"]["idle"] if plan else None, **arrivals(trace, start, end)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--slots", type=int, default=512)
    parser.add_argument("--burst", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--frontends", default="4", help="front-end processes (--frontends of tunebench serve)")
    parser.add_argument("--modes", default="0,8192", help="TUNEBENCH_TOKENIZE_INLINE_CHARS values to compare")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--connections", default="warm,cold", help="bursts over connections opened before the "
                        "clock starts (warm) and/or inside it (cold), alternating; see burst_client")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if unknown := set(args.connections.split(",")) - set(CONNECTIONS):
        parser.error(f"--connections: unknown {', '.join(sorted(unknown))}; choose from {', '.join(CONNECTIONS)}")
    args.frontend, args.warmup, args.duration = "split", 0.0, 0.0  # what serve_throughput's Session reads
    work = Path(tempfile.mkdtemp(prefix="served-arrivals-"))
    tokenizer = Path(args.tokenizer) if args.tokenizer else build_tokenizer(work / "tokenizer")
    texts = prompt_texts(tokenizer)
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for mode in args.modes.split(","):
            trace = work / f"arrivals-{mode}.jsonl"
            os.environ["TUNEBENCH_TOKENIZE_INLINE_CHARS"], os.environ["TUNEBENCH_ENGINE_ARRIVALS"] = mode, str(trace)
            with Session(args, work, tokenizer, "batched", f"batched-inline-chars-{mode}") as url:
                asyncio.run(fire(url, texts, args.burst, args.new_tokens))  # warm-up: every graph captured
                for _ in range(args.repeat):
                    for connections in args.connections.split(","):
                        result = measured_burst(url, texts, args.burst, args.new_tokens, trace, connections)
                        runs.setdefault(f"{mode} {connections}", []).append(result)
                        log(f"inline chars {mode}, {connections} connections: {result}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = ("wall_s", "output_tokens_per_s", "idle_s", "first_ms", "half_ms", "last_ms", "reads")
    line = {"benchmark": "served_arrivals", "model": args.model, "device": args.device, "slots": args.slots,
            "burst": args.burst, "new_tokens": args.new_tokens, "frontends": args.frontends, "runs": runs,
            "median": {mode: {k: statistics.median(r[k] for r in rs if r.get(k) is not None) for k in keys
                              if any(r.get(k) is not None for r in rs)} for mode, rs in runs.items()}}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "results.jsonl").open("a") as f:
            f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
