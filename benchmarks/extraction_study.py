"""Zero-shot vs few-shot vs LoRA on the built-in extraction sample (the generation task), one JSON line each.

    python benchmarks/extraction_study.py [--out runs/extraction] [--set k=v ...]

Runs `tunebench run studies/extraction.yaml` (resumable: finished cells are reused) with the embedded
SmolLM2-135M-Instruct on the CPU, then prints, per evaluation, its method, n, every metric with its 95%
interval, the per-field JSON accuracies, prompt tokens, and the wall time of its training and evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/extraction", help="the study's directory")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="passed to tunebench run")
    parser.add_argument("--only", help="passed to tunebench run (e.g. method=lora); other finished cells still print")
    args = parser.parse_args()
    command = [sys.executable, "-m", "tunebench.cli", "run", str(ROOT / "studies" / "extraction.yaml"),
               "--out", args.out, *[f"--set={s}" for s in args.sets], *(["--only", args.only] if args.only else [])]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, stdout=sys.stderr)
    if done.returncode != 0:
        return done.returncode
    out = Path(args.out)
    for path in sorted(out.glob("*/eval/*/metrics.json")):
        doc = json.loads(path.read_text())
        train = path.parent.parent.parent / "train" / "summary.json"
        summary = json.loads(train.read_text()) if train.exists() else {}
        rows = [json.loads(line) for line in (path.parent / "predictions.jsonl").read_text().splitlines()]
        print(json.dumps({
            "benchmark": "extraction_study", "cell": path.parent.parent.parent.name, "method": doc["method"],
            "model": doc["model"], "n": doc["n_evaluated"], "dtype": doc["settings"]["dtype"],
            "metrics": {k: {"value": round(v["value"], 4), "ci95": [round(c, 4) for c in v["ci95"] or []]}
                        for k, v in doc["metrics"].items()},
            "json_fields": {k: v["accuracy"] for k, v in doc.get("json_fields", {}).items()},
            "prompt_tokens_mean": round(sum(r["prompt_tokens"] for r in rows) / max(1, len(rows)), 1),
            "eval_wall_s": doc["speed"]["wall_s"], "train_wall_s": summary.get("wall_time_s"),
            "train_examples": summary.get("train_examples"), "train_cost_usd": summary.get("cost_usd"),
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
