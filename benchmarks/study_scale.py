"""How close the Ray executor comes to the ideal schedule, and what the driver costs per cell.

    python benchmarks/study_scale.py [--cells 1000] [--nodes 4] [--gpus-per-node 8] [--min-s 0.3] [--max-s 3]

A study of N LoRA cells whose stage functions are stand-ins: training sleeps a seeded, log-uniform duration
(min-s..max-s), 10% of the cells need 2 GPUs, evaluation writes its files at once. They run through the real
driver (decide, submit, record in results.db) on a `ray.cluster_utils.Cluster` of several nodes with fake GPUs.
Each cell's data.train_count encodes its duration, so the driver's own cost estimate (examples x epochs) is what
orders the units, as for a real study. Ideal makespan = max(total GPU-seconds / GPUs, longest unit). Before the
timed run one warm-up wave keeps every worker busy (each imports tunebench and torch once; Ray reuses them).
Then the inline executor runs 20 short cells (after one warm-up cell), against the sum of their sleeps: the
seam's own cost. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from tunebench.rundir import write_json
from tunebench.study import stages as st


def sleep_train(cfg, run, **kwargs):
    time.sleep(cfg.data.train_count / 1000.0)
    write_json(run.train / "summary.json", {"device": "stand-in", "wall_time_s": cfg.data.train_count / 1000.0,
                                            "tokens_seen": cfg.data.train_count})
    return {}


def quick_eval(cfg, run, **kwargs):
    folder = st.eval_dir(cfg, run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("")
    write_json(folder / "metrics.json", {"n_evaluated": 1, "metrics": {"accuracy": 1.0}})
    return {}


STAGES = st.StageFunctions(train=sleep_train, evaluate=quick_eval)


def durations(n: int, low: float, high: float, seed: int, two_gpu: float = 0.1) -> list[tuple[float, int]]:
    rng = random.Random(seed)
    return [(math.exp(rng.uniform(math.log(low), math.log(high))), 2 if rng.random() < two_gpu else 1)
            for _ in range(n)]


def study_file(folder: Path, name: str, cells: list[tuple[float, int]]) -> Path:
    lines = [f"name: {name}", "defaults:", "  method: lora", "  data: {source: standin}",
             "  training: {epochs: 1}", "  cost: {price_per_hour: 1.0}", "experiments:"]
    for i, (seconds, gpus) in enumerate(cells):
        lines.append(f"  - {{lora: {{r: {i + 1}}}, data: {{train_count: {max(1, round(seconds * 1000))}}}, "
                     f"resources: {{gpus: {gpus}}}}}")
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(path: Path, out: Path, executor: str) -> tuple[float, float, object]:
    from rich.console import Console

    from tunebench.config.study import load_study
    from tunebench.study.runner import run_study

    study = load_study(path)
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = run_study(study, out, executor=executor, stages=STAGES, yes=True, console=Console(quiet=True))
    return time.perf_counter() - wall, time.process_time() - cpu, outcome


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--min-s", type=float, default=0.3)
    p.add_argument("--max-s", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--two-gpu", type=float, default=0.1, help="fraction of cells that need 2 GPUs")
    args = p.parse_args()

    import ray
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(args.nodes):
        cluster.add_node(num_cpus=args.gpus_per_node, num_gpus=args.gpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="warning")
    gpus = args.nodes * args.gpus_per_node
    tmp = Path(tempfile.mkdtemp(prefix="study-scale-"))
    try:
        # every worker busy at once, so each one starts and imports what a unit needs (torch included) once
        warm = durations(gpus, 3.0, 3.0, args.seed + 1)
        run(study_file(tmp, "warmup", [(s, 1) for s, _ in warm]), tmp / "warmup", "ray")
        cells = durations(args.cells, args.min_s, args.max_s, args.seed, args.two_gpu)
        makespan, driver_cpu, outcome = run(study_file(tmp, "scale", cells), tmp / "scale", "ray")
    finally:
        ray.shutdown()
        cluster.shutdown()
    gpu_seconds = sum(s * g for s, g in cells)
    ideal = max(gpu_seconds / gpus, max(s for s, _ in cells))
    run(study_file(tmp, "inline-warmup", durations(1, 0.05, 0.05, args.seed + 3)), tmp / "inline-warmup", "inline")
    short = durations(20, 0.05, 0.05, args.seed + 2)
    inline_wall, inline_cpu, inline = run(study_file(tmp, "inline", short), tmp / "inline", "inline")
    print(json.dumps({
        "benchmark": "study_scale", "executor": "ray", "cells": args.cells, "nodes": args.nodes,
        "gpus_per_node": args.gpus_per_node, "two_gpu_cells": sum(g == 2 for _, g in cells),
        "durations_s": [args.min_s, args.max_s], "ok": outcome.ok, "stages_done": outcome.statuses.get("done"),
        "gpu_seconds": round(gpu_seconds, 1), "ideal_makespan_s": round(ideal, 2), "makespan_s": round(makespan, 2),
        "makespan_over_ideal": round(makespan / ideal, 4),
        "driver_cpu_ms_per_cell": round(1000 * driver_cpu / args.cells, 2),
        "inline": {"cells": 20, "ok": inline.ok, "sleep_s": round(sum(s for s, _ in short), 2),
                   "wall_s": round(inline_wall, 2), "overhead_ms_per_cell": round(
                       1000 * (inline_wall - sum(s for s, _ in short)) / 20, 1),
                   "driver_cpu_ms_per_cell": round(1000 * inline_cpu / 20, 2)},
        "machine": f"{os.cpu_count()} cores",
    }))


if __name__ == "__main__":
    main()
