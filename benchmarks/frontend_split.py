"""The split front end against the in-process one (issue 20): the same 512-request bursts through `tunebench serve
--frontend split` (the engine in a process of its own), `split:N` (N front-end processes sharing it,
`--frontends N`), `--frontend inline` (HTTP and engine in one process), and the engine offline (no HTTP,
`tunebench.serve.offline`), in one call. Servers and bursts are
`serve_throughput.py`'s (redpajama-3b random weights, 100-token prompts, 64 and 16 new tokens, 256 slots,
`ignore_eos`); each burst is measured `--repeat` times, alternating profiles, after warm-up bursts of 8 and 64
tokens (which capture every CUDA graph the measured bursts use). A mode ending in `@thread` tokenizes every
prompt in the front end's tokenizing thread (TUNEBENCH_TOKENIZE_INLINE_CHARS=0) instead of short ones on its event
loop; one with `~R` runs its server with `--waiting-served-ratio R` (`split:4~0`). One JSON line per profile,
with the best burst's engine schedule (steps, prefills, the engine process's seconds by phase and "idle": the
burst's wall with no work in the engine, waiting on the front ends):

    python3 benchmarks/frontend_split.py --out $OUT [--repeat 2]
    python3 benchmarks/frontend_split.py --slots 512 --burst 512 --frontends split,split:2,split:4 --out $OUT
    python3 benchmarks/frontend_split.py --slots 512 --burst 512 --frontends split:4@thread,split:4,split:8 --out $OUT
    python3 benchmarks/frontend_split.py --slots 512 --burst 512 --frontends split:4,split:4~0 --out $OUT
    python benchmarks/frontend_split.py --model DIR --tokenizer DIR --device cpu --slots 8   # a laptop's tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_checks import offline_bursts
from serve_report import collect_profiles, log
from serve_throughput import PROFILES, Session, build_tokenizer, burst, prompt_texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2, help="measured bursts per profile and front end")
    parser.add_argument("--frontends", default="split,inline", help="comma-separated: split, split:N (N "
                        "front-end processes), inline; any of them ~R (--waiting-served-ratio R) and @thread "
                        "(every prompt tokenized off the loop), e.g. split:4~0@thread")
    parser.add_argument("--burst", type=int, default=None, help="requests per burst (default: twice --slots)")
    parser.add_argument("--skip-offline", action="store_true", help="served bursts only")
    parser.add_argument("--waiting-served-ratio", type=float, default=None, help="tunebench serve "
                        "--waiting-served-ratio, and the same for the offline engine (default: the server's)")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    # serve_throughput's Session reads these
    args.warmup, args.duration = 0.0, 0.0
    out = args.out or Path(tempfile.mkdtemp(prefix="frontend-split-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="frontend-split-work-"))
    tokenizer = Path(args.tokenizer) if args.tokenizer else build_tokenizer(work / "tokenizer")
    texts = prompt_texts(tokenizer)
    count = args.burst or 2 * args.slots
    modes = args.frontends.split(",")
    served: dict[str, dict[str, list[dict]]] = {}
    base_ratio = args.waiting_served_ratio
    started = time.monotonic()
    try:
        for frontend in modes:
            # serve_throughput's serve_args passes these on
            spec, _, tokenizing = frontend.partition("@")
            mode, _, ratio = spec.partition("~")  # split:4~0: this server's --waiting-served-ratio
            args.waiting_served_ratio = float(ratio) if ratio else base_ratio
            args.frontend, _, processes = mode.partition(":")
            args.frontends = processes or "1"
            os.environ.pop("TUNEBENCH_TOKENIZE_INLINE_CHARS", None)  # the server's default unless @thread
            if tokenizing == "thread":
                os.environ["TUNEBENCH_TOKENIZE_INLINE_CHARS"] = "0"
            with Session(args, work, tokenizer, "batched", f"batched-{frontend.replace('@', '-')}") as url:
                for new_tokens in (8, max(PROFILES.values())):  # every bucket's graph (batch and width) first
                    burst(url, texts, count, new_tokens)
                for _ in range(args.repeat):
                    for profile, new_tokens in PROFILES.items():
                        result = burst(url, texts, count, new_tokens)
                        served.setdefault(profile, {}).setdefault(frontend, []).append(result)
                        log(f"{frontend} {profile}: {result}")
        args.waiting_served_ratio = base_ratio
        offline = {} if args.skip_offline else offline_bursts(args, tokenizer, texts, PROFILES)
    finally:
        collect_profiles(work, out)
        shutil.rmtree(work, ignore_errors=True)
    lines = []
    for profile in PROFILES:
        by = {f: max(runs, key=lambda r: r["output_tokens_per_s"]) for f, runs in served.get(profile, {}).items()}
        best = {f: r["output_tokens_per_s"] for f, r in by.items()}
        off = offline.get(profile, {})
        line = {"benchmark": "frontend_split", "profile": profile, "requests": count, "slots": args.slots,
                "waiting_served_ratio": args.waiting_served_ratio, "model": args.model, "device": args.device,
                "served": {f: [r["output_tokens_per_s"] for r in runs] for f, runs in served[profile].items()},
                "best_output_tokens_per_s": best,
                "median_output_tokens_per_s": {f: statistics.median(r["output_tokens_per_s"] for r in runs)
                                               for f, runs in served[profile].items()},
                "schedule": {f: r.get("schedule") for f, r in by.items()},
                "offline_output_tokens_per_s": off.get("output_tokens_per_s"),
                "offline_profile": off.get("profile")}
        if "split" in best and "inline" in best:
            line["split_over_inline"] = round(best["split"] / best["inline"], 3)
        for mode in best:
            if mode.startswith("split:") and "split" in best:
                line[f"{mode}_over_split"] = round(best[mode] / best["split"], 3)
        if off and best:
            line["offline_over_best_served"] = round(off["output_tokens_per_s"] / max(best.values()), 3)
        lines.append(line)
    with (out / "results.jsonl").open("a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
            print(json.dumps(line), flush=True)
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
