"""What `serve_throughput.py` reports: its JSON lines (one per engine and profile, each appended to results.jsonl
as it is printed), the inference-cost tables through `tunebench bench serve`'s comparison writer, and the batched
engine's step-time lines gathered from the server logs; `log` too, which every serving benchmark uses. The run
itself (servers, load, the time plan) stays in serve_throughput.py."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def result_line(engine: str, profile: str, summary: dict[str, Any], saturation: dict[str, Any] | None,
                **extra: Any) -> dict[str, Any]:
    best = summary["max_sustainable"]
    at_best = next((e["mean"] for e in summary["rates"] if e["offered_rps"] == best["offered_rps"]), None)
    at = at_best or {}
    return {
        "benchmark": "serve_throughput", "engine": engine, "profile": profile, **extra,
        "max_sustainable_rps": best["offered_rps"],
        "achieved_rps": rounded(best.get("achieved_rps"), 3), "throughput_rps": rounded(best.get("throughput_rps"), 3),
        "output_tokens_per_s_at_max": rounded(at.get("output_tokens_per_s"), 1),
        "latency_p90_s": rounded(best.get("latency_p90_s")),
        "ttft_p50_s": rounded(at.get("ttft_p50_s")), "ttft_p90_s": rounded(at.get("ttft_p90_s")),
        "itl_p50_s": rounded(at.get("itl_p50_s")), "itl_p90_s": rounded(at.get("itl_p90_s")),
        "tpot_p50_s": rounded(at.get("tpot_p50_s")), "tpot_p90_s": rounded(at.get("tpot_p90_s")),
        "saturation": saturation,
        "rates": [{"rps": e["offered_rps"], "passed": e["passed"], "p90_s": rounded(e["mean"].get("latency_p90_s")),
                   "achieved_rps": rounded(e["achieved_rps"], 3),
                   "engine_busy": rounded(e["mean"].get("server_engine_busy"), 3)} for e in summary["rates"]],
        "first_failing_reasons": best.get("failure_reasons"),
        # Every rate tried passed: the capacity is at least the top one, not that rate.
        "max_is_lower_bound": all(e["passed"] for e in summary["rates"]),
        "cost_per_1k_tokens": (summary.get("cost") or {}).get("cost_per_1k_tokens"),
        "cpu_cores_busy": summary.get("cpu_cores_busy"),
    }


def emit(line: dict[str, Any], results: Path) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    with results.open("a") as f:
        f.write(text + "\n")


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else device


def write_cost_tables(summaries: dict[str, dict[str, Any]], work: Path, out: Path, args: argparse.Namespace,
                      slo: str) -> None:
    """The original's Tables 6-9 through `tunebench bench serve`'s comparison writer, one per profile."""
    from tunebench.config.schema import LoadtestConfig
    from tunebench.loadtest.bench import BenchPlan, write_comparison
    from tunebench.loadtest.prompt_sets import PromptSet

    parts = []
    for profile, by_engine in summaries.items():
        plan = BenchPlan([args.model, "--random-weights"], list(by_engine), LoadtestConfig(slo=slo),
                         PromptSet([], "serve_throughput"), work / f"cost-{profile}",
                         title=f"{args.model} (random weights), {device_name(args.device)}, {profile}")
        (work / f"cost-{profile}").mkdir(parents=True, exist_ok=True)
        comparison = write_comparison(plan, by_engine)
        table = (work / f"cost-{profile}" / "comparison.md").read_text().splitlines()
        parts.append("\n".join(line for line in table if not line.startswith("![")))  # plots: in details.tar.gz
        emit({"benchmark": "serve_throughput", "cost_table": profile, "rows": comparison["engines"]},
             out / "results.jsonl")
    (out / "cost_table.md").write_text("\n".join(parts))


def collect_profiles(work: Path, out: Path) -> None:
    """The batched engine's step-time breakdown lines (logged every 10 s under load) from every server log."""
    lines = []
    for path in sorted(work.glob("server-*.log")):
        lines += [f"{path.stem}: {line.strip()}" for line in path.read_text(errors="replace").splitlines()
                  if any(key in line for key in ("profile:", "batched engine:", "captured", "compiled decode",
                                                       "warm-up", "decode unavailable"))]
    (out / "engine_profile.log").write_text("\n".join(lines) + "\n")
    for line in lines[-12:]:
        log(line)
