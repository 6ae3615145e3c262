"""Serving throughput on the GPU (issue 10): naive vs batched `tunebench serve`, measured with `tunebench loadtest`.

Every server is `tunebench serve redpajama-3b --random-weights` in a child process on a loopback port, driven
over HTTP by the load tester (open loop, constant arrivals, `ignore_eos`, streaming, SLO p90 <= 2 s with
>= 99% success). Two profiles: 100-token prompts / 64 new tokens, and classification-like 100 / 16. For each
engine and profile one JSON line: max sustainable rate, achieved throughput there, output tokens/s at
saturation (a closed-loop burst that fills every slot), TTFT and inter-token latency p50/p90 at the max rate,
and the rates tried. Then the batched engine with a LoRA adapter served unmerged and merged (100/64, the
adapter picked per request through TGI's `adapter_id`), and a single-stream inter-token latency per engine.
The inference-cost table (the original's Tables 6-9: server, $ per 1K tokens, max req/s, throughput, p90) is
written by `tunebench bench serve`'s comparison code, priced with the price table's h200 entry.

The rate ladder is chosen, not swept blindly, so the whole run fits one device call: a burst measures the
saturation throughput C (requests/s), then the open-loop rates are fractions of C (BATCHED_FRACTIONS; naive's
capacity is 1 / its single-request service time, NAIVE_FRACTIONS). A time plan is printed at the start,
and parts that would overrun `--budget-s` are skipped (and say so).

    device (one call; carry [".whl"]):
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/fastapi-*.whl .whl/starlette-*.whl .whl/uvicorn-*.whl .whl/pydantic-*.whl .whl/pydantic_core-*.whl \\
        .whl/annotated_types-*.whl .whl/typing_inspection-*.whl .whl/opentelemetry_api-*.whl \\
        .whl/importlib_metadata-*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 && \\
      python3 benchmarks/serve_throughput.py --out $OUT            # full, ~8.5 min
      python3 benchmarks/serve_throughput.py --quick --out $OUT    # smoke, ~3 min: graph == eager, step profile
      python3 benchmarks/serve_throughput.py --adapters-only --out $OUT   # LoRA unmerged vs merged, ~3 min
      python3 benchmarks/serve_throughput.py --offline --out $OUT  # served vs offline engine, ~4 min

`--offline` measures what the HTTP front end costs: the batched server (the 512-request bursts at 100/64 and
100/16, open-loop rates at fractions of saturation, a single stream), then the same bursts through the same
engine in this process with no HTTP, no event loop and no engine thread (`tunebench.serve.offline`), one
JSON line per profile with both and their ratio, and the LoRA adapter unmerged vs merged offline.

Files in --out: results.jsonl (the JSON lines), cost_table.md (both profiles), engine_profile.log (the
batched engine's step-time breakdown from the server logs), details.tar.gz (every loadtest.json, plot and
server log; the per-request CSVs are left out for size). On a laptop with a tiny model:
    python benchmarks/serve_throughput.py --quick --model DIR --tokenizer DIR --device cpu --slots 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from burst_client import engine_counters, fire, schedule
from cpu_busy import CpuSampler
from engine_checks import graph_matches_eager, make_adapter, offline_bursts
from serve_report import collect_profiles, emit, log, result_line, rounded, write_cost_tables

CORPUS = [
    "The engine makes a rattling noise when the car idles at a red light.",
    "Our pitcher threw a no-hitter in the ninth inning last night.",
    "Simmer the onions in butter until golden, then add the garlic and a pinch of salt.",
    "Solder the resistor to the board and check the voltage with a meter before powering it.",
    "The city council voted to raise the budget for road repairs after a long debate.",
    "The rocket reached orbit and deployed the satellite over the Pacific Ocean.",
    "Anna: are we still on for lunch tomorrow? Ben: yes, 12:30 at the usual place.",
]
PROMPT_TOKENS = 100
PROFILES = {"100in-64out": 64, "classify-100in-16out": 16}
# Open-loop rates as fractions of the capacity estimate (batched: the saturation burst; naive: 1 / service time).
BATCHED_FRACTIONS = {"100in-64out": (0.6, 0.85, 1.1), "classify-100in-16out": (0.7, 1.0)}
NAIVE_FRACTIONS = {"100in-64out": (0.85, 1.1), "classify-100in-16out": (0.9,)}
ADAPTER_RATE_S = 10.0
ADAPTER_FRACTIONS = (0.7, 1.0)
SERVER_START_S = 35.0  # process start, imports, random weights on the GPU, first graphs (estimate for the plan)
RATE_S = 3.0 + 30.0  # warm-up + measured seconds per rate
SLO = "p90<=2s"


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="redpajama-3b", help="preset or model directory (random weights)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="~3 min smoke run: correctness and step profile")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each rate")
    parser.add_argument("--slots", type=int, default=256, help="--max-concurrency of the batched server")
    parser.add_argument("--budget-s", type=float, default=510.0, help="skip parts that would run past this")
    parser.add_argument("--profiles", default=",".join(PROFILES), help="comma-separated subset of: "
                        + ", ".join(PROFILES))
    parser.add_argument("--check", action="store_true", help="full run: first check graph output == eager output")
    parser.add_argument("--adapters-only", action="store_true", help="only the LoRA unmerged vs merged cases")
    parser.add_argument("--offline", action="store_true", help="served vs offline engine on the same bursts")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: train a BPE here)")
    parser.add_argument("--frontend", default="auto", choices=("auto", "split", "inline"),
                        help="tunebench serve --frontend (auto: split on CUDA)")
    parser.add_argument("--frontends", default="auto", help="tunebench serve --frontends: front-end "
                        "processes sharing the engine (split only): N or auto (the server's default)")
    parser.add_argument("--max-prefill-tokens", type=int, default=None, help="tunebench serve --max-prefill-tokens, "
                        "and the same budget for --offline's engine (default: the server's)")
    parser.add_argument("--waiting-served-ratio", type=float, default=None, help="tunebench serve "
                        "--waiting-served-ratio, and the same for --offline's engine (default: the server's)")
    parser.add_argument("--fractions", default=None, help="--offline: open-loop rates as fractions of each "
                        "profile's served burst, e.g. '100in-64out=1.2,1.5;classify-100in-16out=1.5,2'")
    parser.add_argument("--served-only", action="store_true", help="--offline: only the served half")
    parser.add_argument("--single-stream-only", action="store_true", help="only the batched server's single "
                        "stream (decode step speed, issue 20): server start-up, two warm-up requests, the stream")
    parser.add_argument("--rates", default=None, help="--offline: open-loop rates in req/s per profile instead "
                        "of fractions, e.g. '100in-64out=260,300;classify-100in-16out=450,560'")
    parser.add_argument("--skip-single", action="store_true", help="--offline: no single-stream measurement")
    parser.add_argument("--burst", type=int, default=None, help="requests per closed-loop burst (default: twice "
                        "--slots, which keeps every slot busy; the issue's burst is 512)")
    parser.add_argument("--burst-repeats", type=int, default=3, help="warm-connection bursts per saturation "
                        "figure (the median is reported, with every repeat and one cold-connection burst)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.burst_repeats < 1:
        parser.error(f"--burst-repeats must be at least 1, got {args.burst_repeats}")
    return args


def burst_size(args: argparse.Namespace) -> int:
    return args.burst or 2 * args.slots


# ---------------------------------------------------------------- inputs


def build_tokenizer(out: Path) -> Path:
    """A byte-level BPE trained in a second: random weights make any tokenizer equally good, and nothing is
    downloaded."""
    from bpe import train_byte_bpe

    train_byte_bpe(CORPUS * 20, 600, out)
    return out


def prompt_texts(tokenizer_dir: Path, n: int = 256, tokens: int = PROMPT_TOKENS) -> list[str]:
    """n different prompts of `tokens` tokens each (windows of a corpus, re-encoded to check the length)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = tokenizer(" ".join(CORPUS * 200), add_special_tokens=False)["input_ids"]
    texts = []
    for i in range(n):
        start = (i * 37) % (len(ids) - tokens)
        text = tokenizer.decode(ids[start:start + tokens]).replace("\n", " ").strip()
        texts.append(text)
    return texts


# ---------------------------------------------------------------- plan and clock


@dataclass
class Clock:
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    skipped: list[str] = field(default_factory=list)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def allows(self, part: str, cost_s: float) -> bool:
        if self.elapsed + cost_s <= self.budget_s:
            return True
        self.skipped.append(f"{part} (needs ~{cost_s:.0f} s, {self.budget_s - self.elapsed:.0f} s left)")
        log(f"SKIPPED {part}: needs ~{cost_s:.0f} s, {self.budget_s - self.elapsed:.0f} s of the budget left")
        return False


def saturation_seconds(args: argparse.Namespace) -> float:
    """One saturation figure's bursts (`saturation_bursts`): the warm repeats and the cold one, ~2.5 s each."""
    return 2.5 * (args.burst_repeats + 1)


def time_plan(args: argparse.Namespace) -> list[tuple[str, float]]:
    rate_s = args.warmup + args.duration + 2
    if args.quick:
        short = args.warmup + 10 + 2
        return [("graph vs eager check (in-process model load)", 40), ("batched server", SERVER_START_S),
                ("burst + 2 rates + single stream", 10 + 2 * short + 8), ("naive server", SERVER_START_S),
                ("naive single stream", 10)]
    if args.offline:
        short = args.warmup + OFFLINE_RATE_S + 2
        rates = sum(len(f) for p, f in OFFLINE_FRACTIONS.items() if p in chosen_profiles(args))
        bursts = saturation_seconds(args) * len(chosen_profiles(args))
        return [("batched server", SERVER_START_S),
                ("bursts + rates + single stream", 10 + bursts + rates * short + 16),
                ("offline engine: load, bursts", 40), ("continuous-batching peer", 30),
                ("offline LoRA unmerged vs merged", 60)]
    adapters = [(f"LoRA {mode}: server, burst, {len(ADAPTER_FRACTIONS)} rates", adapter_seconds(args))
                for mode in ("unmerged", "merged")]
    if args.adapters_only:
        return adapters
    plan = [("batched server", SERVER_START_S)]
    chosen = chosen_profiles(args)
    plan += [(f"batched {p}: bursts + {len(f)} rates", saturation_seconds(args) + 2 + len(f) * rate_s)
             for p, f in BATCHED_FRACTIONS.items()
             if p in chosen]
    plan += [("batched single stream", 16), ("naive server + single stream", SERVER_START_S + 10)]
    plan += [(f"naive {p}: {len(f)} rates", len(f) * rate_s) for p, f in NAIVE_FRACTIONS.items() if p in chosen]
    return [*plan, *adapters]


# ---------------------------------------------------------------- measuring


def serve_args(args: argparse.Namespace, tokenizer: Path, engine: str, extra: list[str] | None = None) -> list[str]:
    return [args.model, "--random-weights", "--tokenizer", str(tokenizer), "--device", args.device, "--engine",
            engine, "--max-concurrency", str(args.slots if engine == "batched" else 1), "--max-queue", "2048",
            "--max-input-tokens", "128", "--max-new-tokens", "128", "--timeout", "60",
            "--frontend", getattr(args, "frontend", "auto"), "--frontends", str(getattr(args, "frontends", "auto")),
            *(["--max-prefill-tokens", str(args.max_prefill_tokens)] if getattr(args, "max_prefill_tokens", None)
              else []),
            *(["--waiting-served-ratio", str(args.waiting_served_ratio)]
              if getattr(args, "waiting_served_ratio", None) is not None else []), *(extra or [])]


def loadtest(url: str, texts: list[str], rates: list[float], new_tokens: int, out: Path, args: argparse.Namespace,
             counter: Any, *, duration: float | None = None, bisect: int = 0, title: str = "", api: str = "tgi",
             model: str | None = None) -> dict[str, Any]:
    from rich.console import Console

    from tunebench.config.schema import LoadtestConfig
    from tunebench.loadtest.inference_cost import price_for
    from tunebench.loadtest.prompt_sets import PromptSet
    from tunebench.loadtest.runner import LoadtestJob, run_loadtest

    cfg = LoadtestConfig(rates=[round(r, 3) for r in rates], duration=duration or args.duration, warmup=args.warmup,
                         repeat=1, max_new_tokens=new_tokens, ignore_eos=True, stream=True, timeout=20.0, slo=SLO,
                         api=api, bisect=bisect)
    job = LoadtestJob(url, cfg, PromptSet(texts, "serve_throughput"), out, counter=counter,
                      price=price_for("h200", None, local_server=True), title=title, model=model)
    started = time.monotonic()
    summary = run_loadtest(job, console=Console(stderr=True), progress=False)
    summary["cpu_cores_busy"] = CPU.between(started, time.monotonic())
    log(f"{title}: CPU cores busy (per 1 s sample) {summary['cpu_cores_busy']}")
    return summary


def burst(url: str, texts: list[str], count: int, new_tokens: int, adapter: str | None = None,
          connections: str = "warm") -> dict[str, Any]:
    """Closed loop: `count` requests at once (twice the slots keeps every slot busy); saturation throughput.
    With the engine's schedule over the burst, from /metrics (steps, rows per step, prefills). `connections`:
    see `burst_client`."""
    counters = engine_counters(url)
    started = time.monotonic()
    wall, tokens, ok, _ = asyncio.run(fire(url, texts, count, new_tokens, adapter, connections))
    busy = CPU.between(started, time.monotonic())
    return {"requests": count, "ok": ok, "connections": connections, "wall_s": round(wall, 3),
            "requests_per_s": round(ok / wall, 2), "output_tokens_per_s": round(tokens / wall, 1),
            "cpu_cores_busy": busy, "schedule": schedule(counters, engine_counters(url), wall)}


def saturation_bursts(url: str, texts: list[str], args: argparse.Namespace, new_tokens: int,
                      adapter: str | None = None) -> dict[str, Any]:
    """The saturation figure: `--burst-repeats` bursts over warm connections, the median one's line with every
    repeat's tokens/s; then one burst whose requests open their connections inside the timed window
    (`cold_connections`), the figure for as many new clients at once."""
    runs = [burst(url, texts, burst_size(args), new_tokens, adapter) for _ in range(args.burst_repeats)]
    runs.sort(key=lambda r: r["output_tokens_per_s"])
    line = {**runs[len(runs) // 2], "repeats_output_tokens_per_s": [r["output_tokens_per_s"] for r in runs]}
    cold = burst(url, texts, burst_size(args), new_tokens, adapter, connections="cold")
    line["cold_connections"] = {k: cold[k] for k in ("wall_s", "requests_per_s", "output_tokens_per_s")}
    line["cold_connections"]["idle_s"] = (cold["schedule"] or {}).get("engine_s", {}).get("idle")
    return line


def single_stream(url: str, texts: list[str], out: Path, args: argparse.Namespace, counter: Any,
                  new_tokens: int = 64, requests: int = 6) -> dict[str, Any]:
    """Requests one after another (a rate far below capacity): inter-token latency of a lone sequence."""
    rate = 0.5
    summary = loadtest(url, texts, [rate], new_tokens, out, argparse.Namespace(**{**vars(args), "warmup": 2.0}),
                       counter, duration=requests / rate, title="single stream")
    mean = summary["rates"][0]["mean"]
    return {key: rounded(mean.get(f"{key}_s")) for key in ("tpot_p50", "itl_p50", "itl_p90", "ttft_p50", "latency_p50")}


class Session:
    """One server: start, measure, stop; the server log is kept for the profile lines."""

    def __init__(self, args: argparse.Namespace, work: Path, tokenizer: Path, engine: str, name: str,
                 extra: list[str] | None = None) -> None:
        from tunebench.loadtest.bench import ServerProcess, free_port

        self.name = name
        self.log = work / f"server-{name}.log"
        self.server = ServerProcess(serve_args(args, tokenizer, engine, extra), host="127.0.0.1", port=free_port(),
                                    log=self.log, startup_timeout=300)

    def __enter__(self) -> str:
        started = time.monotonic()
        self.server.__enter__()
        log(f"{self.name}: healthy after {time.monotonic() - started:.0f} s")
        log(f"{self.name}: sampling CPU of {CPU.watch(self.server.process.pid)}")
        return self.server.url

    def __exit__(self, *exc: object) -> None:
        CPU.unwatch()
        self.server.stop()


CPU = CpuSampler()


def capacity_rates(saturation_rps: float, fractions: tuple[float, ...]) -> list[float]:
    return [max(0.05, round(saturation_rps * f, 2)) for f in fractions]


# ---------------------------------------------------------------- parts


def run_batched(args, work, tokenizer, texts, counter, clock, results, summaries) -> None:
    with Session(args, work, tokenizer, "batched", "batched") as url:
        # Warm-up that fills every slot: graphs for all batch buckets are captured here, not during the
        # saturation burst (whose rate would then depend on which profile ran first).
        burst(url, texts, burst_size(args), 8)
        for profile, new_tokens in chosen_profiles(args).items():
            fractions = BATCHED_FRACTIONS[profile]
            if not clock.allows(f"batched {profile}", 6 + len(fractions) * (args.warmup + args.duration + 2)):
                continue
            saturation = saturation_bursts(url, texts, args, new_tokens)
            log(f"batched {profile} saturation: {saturation}")
            rates = capacity_rates(saturation["requests_per_s"], fractions)
            summary = loadtest(url, texts, rates, new_tokens, work / f"batched-{profile}", args, counter,
                               title=f"batched {profile}")
            summaries.setdefault(profile, {})["batched"] = summary
            emit(result_line("batched", profile, summary, saturation), results)
        if clock.allows("batched single stream", 15):
            emit({"benchmark": "serve_throughput", "engine": "batched", "profile": "single-stream-64",
                  **single_stream(url, texts, work / "batched-single", args, counter)}, results)


def run_single_stream_only(args, work, tokenizer, texts, counter, results) -> None:
    """The batched server's single stream alone, with its start-up time (compiling, if any, happens in the
    warm-up requests: they run the buckets the stream runs, one row at 100 to 164 tokens)."""
    started = time.monotonic()
    with Session(args, work, tokenizer, "batched", "batched") as url:
        healthy_s = time.monotonic() - started
        warm = time.monotonic()
        for _ in range(2):
            burst(url, texts, 1, 64)
        emit({"benchmark": "serve_throughput", "engine": "batched", "profile": "single-stream-64",
              "decode_compile": os.environ.get("TUNEBENCH_DECODE_COMPILE", "default"),
              "healthy_s": round(healthy_s, 1), "warmup_s": round(time.monotonic() - warm, 1),
              **single_stream(url, texts, work / "batched-single", args, counter)}, results)


def chosen_profiles(args: argparse.Namespace) -> dict[str, int]:
    return {p: n for p, n in PROFILES.items() if p in args.profiles.split(",")}


def run_naive(args, work, tokenizer, texts, counter, clock, results, summaries) -> None:
    rate_s = args.warmup + args.duration + 2
    with Session(args, work, tokenizer, "naive", "naive") as url:
        alone = single_stream(url, texts, work / "naive-single", args, counter, requests=3)
        emit({"benchmark": "serve_throughput", "engine": "naive", "profile": "single-stream-64", **alone}, results)
        per_token = alone["tpot_p50"] or 0.03
        for profile, new_tokens in chosen_profiles(args).items():
            fractions = NAIVE_FRACTIONS[profile]
            if not clock.allows(f"naive {profile}", len(fractions) * rate_s):
                continue
            service_s = (alone["ttft_p50"] or 0.05) + per_token * (new_tokens - 1)
            rates = capacity_rates(1.0 / service_s, fractions)
            summary = loadtest(url, texts, rates, new_tokens, work / f"naive-{profile}", args, counter,
                               title=f"naive {profile}")
            summaries.setdefault(profile, {})["naive"] = summary
            emit(result_line("naive", profile, summary, None, service_s_estimate=round(service_s, 3)), results)


def adapter_seconds(args: argparse.Namespace) -> float:
    return SERVER_START_S + 8 + len(ADAPTER_FRACTIONS) * (args.warmup + ADAPTER_RATE_S + 2)


def run_adapters(args, work, tokenizer, texts, counter, clock, results) -> None:
    """The same 100/64 load with a LoRA adapter: unmerged (peft LoRA layers in the forward pass, picked per
    request by TGI's `adapter_id`) and merged into the weights (served as the base model)."""
    adapter = make_adapter(args.model, work / "lora-adapter")
    profile, new_tokens = "100in-64out", PROFILES["100in-64out"]
    for mode, extra, model in (("unmerged", ["--adapter", f"lora={adapter}"], "lora"),
                               ("merged", ["--adapter", f"lora={adapter}", "--merge"], None)):
        if not clock.allows(f"LoRA {mode}", adapter_seconds(args)):
            continue
        with Session(args, work, tokenizer, "batched", f"batched-lora-{mode}", extra) as url:
            burst(url, texts, burst_size(args), 4, adapter=model)  # warm-up: every batch bucket's graph
            saturation = saturation_bursts(url, texts, args, new_tokens, adapter=model)
            log(f"LoRA {mode} saturation: {saturation}")
            rates = capacity_rates(saturation["requests_per_s"], ADAPTER_FRACTIONS)
            summary = loadtest(url, texts, rates, new_tokens, work / f"lora-{mode}", args, counter,
                               duration=ADAPTER_RATE_S, title=f"LoRA {mode}", model=model)
            note = (f"{len(rates)} rates ({', '.join(f'{f:g}' for f in ADAPTER_FRACTIONS)} x saturation) for "
                    f"{ADAPTER_RATE_S:g} s each: the max is a lower bound when every rate passed")
            emit(result_line("batched", profile, summary, saturation, lora=mode, note=note), results)


# ---------------------------------------------------------------- quick: graph == eager, step profile


def check_graphs(args, tokenizer, texts, results) -> None:
    """Graph output == eager output on the same batches (in-process), then free the GPU for the servers."""
    import gc

    import torch

    emit(graph_matches_eager(args, tokenizer, texts), results)
    gc.collect()
    torch.cuda.empty_cache()


def run_quick(args, work, tokenizer, texts, counter, clock, results) -> None:
    if args.device == "cuda":
        check_graphs(args, tokenizer, texts, results)
    short = argparse.Namespace(**{**vars(args), "duration": 10.0})
    with Session(args, work, tokenizer, "batched", "batched") as url:
        burst(url, texts, 32, 8)
        saturation = saturation_bursts(url, texts, args, 64)
        log(f"batched saturation: {saturation}")
        rates = capacity_rates(saturation["requests_per_s"], (0.5, 0.9))
        summary = loadtest(url, texts, rates, 64, work / "quick-batched", short, counter, title="quick batched")
        emit(result_line("batched", "100in-64out (quick, 10 s per rate)", summary, saturation), results)
        emit({"benchmark": "serve_throughput", "engine": "batched", "profile": "single-stream-64",
              **single_stream(url, texts, work / "batched-single", args, counter)}, results)
    if clock.allows("naive single stream", SERVER_START_S + 10):
        with Session(args, work, tokenizer, "naive", "naive") as url:
            emit({"benchmark": "serve_throughput", "engine": "naive", "profile": "single-stream-64",
                  **single_stream(url, texts, work / "naive-single", args, counter, requests=3)}, results)


# ---------------------------------------------------------------- offline: the engine without HTTP


OFFLINE_RATE_S = 6.0
# Open-loop rates per profile as fractions of its served burst's rate: where p90 <= 2 s stops holding.
OFFLINE_FRACTIONS = {"100in-64out": (0.6, 0.8, 1.0, 1.2), "classify-100in-16out": (0.8, 1.0)}
PEER_PROMPTS = 256  # requests of the 100/64 burst also run through transformers' continuous batching


def offline_fractions(args: argparse.Namespace, text: str | None = None) -> dict[str, tuple[float, ...]]:
    """--fractions 'PROFILE=f1,f2;PROFILE=...' parsed (or --rates, as `text`); an unknown profile is refused
    before anything runs."""
    out: dict[str, tuple[float, ...]] = {}
    for part in filter(None, ((args.fractions if text is None else text) or "").split(";")):
        name, _, values = part.partition("=")
        if name.strip() not in PROFILES:
            raise SystemExit(f"--fractions: unknown profile {name.strip()!r}; choose from {', '.join(PROFILES)}")
        out[name.strip()] = tuple(float(v) for v in values.split(","))
    return out


def run_served_for_offline(args, work, tokenizer, texts, counter, clock, results) -> dict[str, dict[str, Any]]:
    """The served half of `--offline`: bursts per profile, open-loop rates (100/64), a single stream."""
    served: dict[str, dict[str, Any]] = {}
    seconds = min(OFFLINE_RATE_S, args.duration)
    short = argparse.Namespace(**{**vars(args), "duration": seconds})
    with Session(args, work, tokenizer, "batched", "batched") as url:
        burst(url, texts, burst_size(args), 8)  # every batch bucket's graph, before anything is measured
        for profile, new_tokens in chosen_profiles(args).items():
            served[profile] = saturation_bursts(url, texts, args, new_tokens)
            log(f"served {profile} burst: {served[profile]}")
        for profile in served:
            fractions = offline_fractions(args).get(profile, OFFLINE_FRACTIONS[profile])
            fixed = offline_fractions(args, args.rates or "").get(profile)
            if not clock.allows(f"open-loop rates {profile}", len(fixed or fractions) * (args.warmup + seconds + 2)):
                continue
            rates = list(fixed) if fixed else capacity_rates(served[profile]["requests_per_s"], fractions)
            summary = loadtest(url, texts, rates, PROFILES[profile], work / f"offline-served-{profile}", short,
                               counter, title=f"batched (served) {profile}")
            emit(result_line("batched", f"{profile} ({seconds:g} s per rate)", summary, served[profile]),
                 results)
        if not args.skip_single and clock.allows("batched single stream", 15):
            emit({"benchmark": "serve_throughput", "engine": "batched", "profile": "single-stream-64",
                  **single_stream(url, texts, work / "batched-single", args, counter)}, results)
    return served


def run_offline_comparison(args, work, tokenizer, texts, counter, clock, results) -> None:
    profiles = chosen_profiles(args)
    served = run_served_for_offline(args, work, tokenizer, texts, counter, clock, results)
    if args.served_only or not clock.allows("offline engine", 40):
        return
    peer = PEER_PROMPTS if "100in-64out" in profiles and clock.allows("continuous-batching peer", 70) else 0
    offline = offline_bursts(args, tokenizer, texts, profiles, peer_prompts=peer)
    if "continuous_peer" in offline:
        emit({"benchmark": "serve_throughput", "comparison": "engine_offline_vs_continuous_batching",
              "profile": "100in-64out", **offline.pop("continuous_peer")}, results)
    for profile in profiles:
        a, b = offline.get(profile), served.get(profile)
        ratio = round(a["output_tokens_per_s"] / b["output_tokens_per_s"], 3) if a and b else None
        emit({"benchmark": "serve_throughput", "comparison": "offline_vs_served", "profile": profile,
              "requests": burst_size(args), "slots": args.slots, "served": b, "offline": a,
              "offline_over_served": ratio}, results)
    if clock.allows("offline LoRA", 60):
        adapter = make_adapter(args.model, work / "lora-adapter")
        profile = {"100in-64out": PROFILES["100in-64out"]}
        by_mode = {mode: offline_bursts(args, tokenizer, texts, profile, ("lora", adapter, merge))["100in-64out"]
                   for mode, merge in (("unmerged", False), ("merged", True))}
        emit({"benchmark": "serve_throughput", "comparison": "lora_offline", "profile": "100in-64out", **by_mode,
              "unmerged_over_merged": round(by_mode["unmerged"]["output_tokens_per_s"]
                                            / by_mode["merged"]["output_tokens_per_s"], 3)}, results)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="serve-throughput-"))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="serve-throughput-work-"))
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    plan = time_plan(args)
    clock = Clock(args.budget_s if not args.quick else min(args.budget_s, 240.0))
    log("time plan: " + "; ".join(f"{part} ~{s:.0f} s" for part, s in plan) +
        f"; total ~{sum(s for _, s in plan):.0f} s, budget {clock.budget_s:.0f} s")
    from tunebench.loadtest.prompt_sets import load_counter

    tokenizer = Path(args.tokenizer) if args.tokenizer else build_tokenizer(work / "tokenizer")
    texts = prompt_texts(tokenizer)
    counter = load_counter(str(tokenizer))
    summaries: dict[str, dict[str, Any]] = {}
    try:
        if args.quick:
            run_quick(args, work, tokenizer, texts, counter, clock, results)
        elif args.single_stream_only:
            run_single_stream_only(args, work, tokenizer, texts, counter, results)
        elif args.offline:
            run_offline_comparison(args, work, tokenizer, texts, counter, clock, results)
        else:
            if args.check and args.device == "cuda":
                check_graphs(args, tokenizer, texts, results)
            if not args.adapters_only:
                run_batched(args, work, tokenizer, texts, counter, clock, results, summaries)
                run_naive(args, work, tokenizer, texts, counter, clock, results, summaries)
                write_cost_tables(summaries, work, out, args, SLO)
            run_adapters(args, work, tokenizer, texts, counter, clock, results)
    finally:
        collect_profiles(work, out)
        with tarfile.open(out / "details.tar.gz", "w:gz") as tar:
            tar.add(work, arcname="serve-throughput", filter=lambda info: None if any(
                part in info.name for part in ("tokenizer", "lora-adapter", "requests.csv")) else info)
        shutil.rmtree(work, ignore_errors=True)
        log(f"done in {clock.elapsed:.0f} s; skipped: {clock.skipped or 'nothing'}; results in {out}")
        if results.exists():  # again at the very end, where the device call's output tail keeps it
            print("=== results.jsonl ===\n" + results.read_text(), flush=True)


if __name__ == "__main__":
    main()
