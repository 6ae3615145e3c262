"""Few-shot evaluation with and without reusing the prompts' shared beginning (its KV cache computed once).

    python benchmarks/prefix_reuse.py                       # the demo's few-shot summarization cell (built-in data)
    python benchmarks/prefix_reuse.py --task classification # the demo's few-shot classification cell
    TUNEBENCH_SHARED=../shared python benchmarks/prefix_reuse.py --data shared --n 48   # SAMSum / 20 Newsgroups

The embedded SmolLM2-135M-Instruct evaluates a few-shot cell (solved examples in every prompt) twice through
`tunebench.evaluate.evaluate`: reusing the shared prefix (the default), then recomputing it
(generation.PREFIX_MIN_TOKENS set out of reach). One JSON line: wall seconds of each (model time only, as
metrics.json's speed reports), the speed-up, the shared prefix's length, prompt lengths, and whether the
predictions are identical (in float32 they must be, token for token; bf16 rounds the prefix differently).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("summarization", "classification"), default="summarization")
    parser.add_argument("--data", choices=("builtin", "shared"), default="builtin",
                        help="built-in examples (offline), or SAMSum / 20 Newsgroups from $TUNEBENCH_SHARED")
    parser.add_argument("--method", choices=("few_shot", "zero_shot"), default="few_shot")
    parser.add_argument("--scoring", choices=("constrained", "loglik"), default="constrained",
                        help="classification only")
    parser.add_argument("--n", type=int, default=48, help="examples to evaluate")
    parser.add_argument("--dtype", default="auto", help="auto | bfloat16 | float32 (auto: as the demo picks)")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser.parse_args(argv)


def cell_for(args: argparse.Namespace) -> Any:
    from tunebench.config.schema import CellConfig
    from tunebench.demo import choose_dtype, cpu_flags

    datasets = Path(os.environ.get("TUNEBENCH_SHARED", "")) / "datasets"
    if args.data == "builtin":
        data = {"source": f"builtin:{args.task}", "task": args.task}
    elif not datasets.is_dir():
        raise SystemExit(json.dumps({"skipped": "TUNEBENCH_SHARED is not set or has no datasets/"}))
    elif args.task == "summarization":
        data = {"source": str(datasets / "samsum" / "train.jsonl"), "task": args.task,
                "eval_split": str(datasets / "samsum" / "validation.jsonl")}
    else:
        data = {"source": str(datasets / "newsgroups"), "task": args.task, "eval_split": "validation",
                "validation_size": 0.02, "cleaning": {"strip_headers": True, "max_input_tokens": 256}}
    dtype = choose_dtype(args.dtype, cpu_flags())[0]
    scoring = {"scoring": args.scoring} if args.task == "classification" else {}
    cfg = {"model": {"name": "smollm2-135m-instruct", "dtype": dtype}, "method": args.method, "data": data,
           "eval": {"batch_size": args.batch_size, **scoring}}
    return CellConfig.model_validate(cfg).normalized()


def evaluate_once(cell: Any, loaded: Any, out: Path, n: int) -> tuple[dict[str, Any], list[str]]:
    from tunebench.evaluate import evaluate

    doc = evaluate(cell, loaded, out, limit=n, progress=False)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    return doc, [json.loads(line)["prediction"] for line in lines]


def main(argv: list[str] | None = None) -> None:
    import torch

    from tunebench.evaluate import generation, load_for_eval

    args = arguments(argv)
    cell = cell_for(args)
    loaded = load_for_eval(cell)
    seen: list[list[list[int]]] = []  # the prompts of every generate call, as token ids
    find_prefix = generation.SharedPrefix.of
    generation.SharedPrefix.of = lambda model, encoded: seen.append(encoded) or find_prefix(model, encoded)
    with tempfile.TemporaryDirectory() as tmp:
        reused, reused_text = evaluate_once(cell, loaded, Path(tmp) / "reused", args.n)
        generation.PREFIX_MIN_TOKENS = 10**9  # recompute the shared beginning in every row
        recomputed, recomputed_text = evaluate_once(cell, loaded, Path(tmp) / "recomputed", args.n)
    encoded = seen[0]
    metric = "rouge1" if args.task == "summarization" else "accuracy"
    print(json.dumps({
        "benchmark": "prefix_reuse", "task": args.task, "method": args.method,
        "scoring": reused["scoring"], "data": args.data, "n": reused["n_evaluated"],
        "dtype": cell.model.dtype,
        "threads": torch.get_num_threads(), "prompt_tokens_mean": round(sum(map(len, encoded)) / len(encoded), 1),
        "shared_prefix_tokens": generation.common_prefix_length(encoded),
        "reused_s": reused["speed"]["wall_s"], "recomputed_s": recomputed["speed"]["wall_s"],
        "speedup": round(recomputed["speed"]["wall_s"] / reused["speed"]["wall_s"], 2),
        "identical_predictions": reused_text == recomputed_text,
        metric: [round(doc["metrics"][metric]["value"], 2) for doc in (reused, recomputed)],
    }))


if __name__ == "__main__":
    main()
