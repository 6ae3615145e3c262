"""Quality parity of the training recipes: `fast` against the original study's hyperparameters (minus 4-bit).

Both runs train LoRA on the embedded SmolLM2-135M-Instruct with the same built-in classification data, seed,
LoRA settings and learning rate; they differ in what the recipes differ in (packing, batching, gradient
checkpointing; on CPU both run fp32 with AdamW). Prints one JSON line: each recipe's validation loss and
teacher-forced exact match from training, and, when tunebench.evaluate is installed, accuracy and macro-F1 on
the test split with constrained decoding.

    OMP_NUM_THREADS=2 python benchmarks/train_parity.py [--train-count 80 --epochs 2 --eval-limit 48]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from tunebench.config.schema import CellConfig
from tunebench.rundir import RunDir
from tunebench.train import train_cell


def cell_for(recipe: str, args: argparse.Namespace) -> CellConfig:
    return CellConfig.model_validate({
        "model": {"name": args.model}, "method": "lora",
        "data": {"source": "builtin:classification", "task": "classification", "train_count": args.train_count,
                 "cleaning": {"max_input_tokens": args.max_input_tokens}, "seed": args.seed},
        "training": {"recipe": recipe, "epochs": args.epochs, "seed": args.seed},
        "eval": {"limit": args.eval_limit, "scoring": "constrained", "bootstrap": 0},
    })


def one_recipe(recipe: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cell = cell_for(recipe, args)
    run = RunDir(out / recipe)
    summary = train_cell(cell, run, force=True, progress=False)
    result = {k: summary[k] for k in ("eval_loss", "eval_accuracy", "train_loss", "steps", "tokens_seen",
                                      "train_time_s", "tokens_per_s", "peak_memory_gib")}
    result |= {"packing": summary["plan"]["packing"], "tokens_per_step": tokens_per_step(summary["plan"]),
               "epoch_eval_loss": [json.loads((Path(p) / "epoch.json").read_text()).get("eval_loss")
                                   for p in summary["epoch_checkpoints"]]}
    if importlib.util.find_spec("tunebench.evaluate") is not None:
        from tunebench.evaluate import evaluate_cell

        start = time.perf_counter()
        metrics = evaluate_cell(cell, run, limit=args.eval_limit, progress=False)
        result |= {"test_accuracy": metrics["metrics"]["accuracy"], "test_macro_f1": metrics["metrics"]["macro_f1"],
                   "test_examples": args.eval_limit, "eval_time_s": round(time.perf_counter() - start, 1)}
    return result


def tokens_per_step(plan: dict[str, Any]) -> int:
    rows = plan["tokens_per_batch"] or plan["batch_size"] * plan["max_seq_len"]
    return rows * plan["gradient_accumulation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--train-count", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-input-tokens", type=int, default=32)
    parser.add_argument("--eval-limit", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tunebench-parity-") as tmp:
        out = args.out or Path(tmp)
        results = {recipe: one_recipe(recipe, args, out) for recipe in ("fast", "original")}
    print(json.dumps({"benchmark": "train_parity", "model": args.model, "train_count": args.train_count,
                      "epochs": args.epochs, "max_input_tokens": args.max_input_tokens, "seed": args.seed,
                      **results,
                      "eval_loss_difference": results["fast"]["eval_loss"] - results["original"]["eval_loss"]}))


if __name__ == "__main__":
    main()
