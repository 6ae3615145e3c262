"""Device check of the training engine (issue 4, item 12): LoRA, QLoRA and the original recipe on RedPajama-3B.

Each case trains a RedPajama-INCITE-3B-architecture model with random weights through `train_cell` (the real
engine: recipes, packing, Trainer, PEFT, bitsandbytes) for a fixed number of optimizer steps, then prints one
JSON line: steps, first and last training loss (it must fall), tokens/s over the whole run and at steady state,
MFU, peak GPU memory, and whether the base really loaded in 4-bit.

    lora      fast recipe, bf16 base, padding-free packing, fused AdamW
    qlora     fast recipe, nf4 4-bit base with double quantization, bf16 compute
    original  the original study's recipe: QLoRA nf4 + fp16 compute, 512-token concatenated rows, batch 1 ×
              gradient accumulation 4, gradient checkpointing, paged AdamW 32-bit

Offline by design: the architecture comes from the preset's numbers (written as config.json next to a
word-level tokenizer built here, one token per word), and the data is synthetic classification text whose
token lengths follow benchmarks/data/token_profile.json (20 Newsgroups in the fine-tuning format) when present,
else a log-normal around 300 tokens. Random weights make any tokenizer and text equally good for speed; the
loss falls as the model learns the 20 labels. The GPU machine lacks pydantic and bitsandbytes; carry wheels:

    device run, carry [".whl"]:
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src && python3 benchmarks/train_gpu_check.py --out $OUT

About 5 minutes on an H200. On a laptop, a smoke run on CPU (the qlora cases need CUDA):
    python benchmarks/train_gpu_check.py --cases lora --steps 3 --layers 2 --hidden 64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROFILE = Path(__file__).parent / "data" / "token_profile.json"
LABELS = [f"topic{i:02d}" for i in range(20)]
WORDS = [f"w{i}" for i in range(4000)]
PROMPT_OVERHEAD = 8  # "###", "Sentence", ":", "###", "Class", ":", the label, EOS: one token each
CASES = {
    "lora": {"method": "lora", "training": {"recipe": "fast"}},
    "qlora": {"method": "qlora", "training": {"recipe": "fast"}},
    "original": {"method": "qlora", "training": {"recipe": "original"}},
}
DEFAULT_STEPS = {"lora": 300, "qlora": 200, "original": 80}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="lora,qlora,original", help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps for every case (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--examples", type=int, default=3000, help="synthetic training examples")
    parser.add_argument("--layers", type=int, default=None, help="shrink the architecture (smoke runs)")
    parser.add_argument("--hidden", type=int, default=None, help="shrink the architecture (smoke runs)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON lines to OUT/train_gpu_check.jsonl")
    return parser.parse_args(argv)


# ---------------------------------------------------------------- synthetic model directory and data


def sequence_lengths(n: int, rng: random.Random) -> tuple[list[int], str]:
    """Token lengths of whole training sequences, drawn from the 20 Newsgroups profile when there is one."""
    if PROFILE.exists():
        histogram = json.loads(PROFILE.read_text())["datasets"]["newsgroups"]["histogram"]
        edges, counts = histogram["edges"], histogram["counts"]
        bins = rng.choices(range(len(counts)), weights=counts, k=n)
        return [rng.randrange(edges[b], edges[b + 1]) for b in bins], f"{PROFILE.name} (newsgroups)"
    return [min(2000, int(rng.lognormvariate(math.log(300), 0.8))) for _ in range(n)], "log-normal, median 300"


def write_data(folder: Path, n_train: int, rng: random.Random) -> str:
    lengths, origin = sequence_lengths(n_train + 100, rng)
    rows = [{"text": " ".join(rng.choices(WORDS, k=max(1, length - PROMPT_OVERHEAD))), "label": LABELS[i % 20]}
            for i, length in enumerate(lengths)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, part in (("train", rows[:n_train]), ("test", rows[n_train:])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return origin


def write_model_dir(folder: Path, args: argparse.Namespace) -> None:
    """config.json of the RedPajama-3B preset, and a word-level tokenizer (one token per synthetic word)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, PreTrainedTokenizerFast

    from tunebench.models.presets import PRESETS

    arch = dict(PRESETS["redpajama-3b"].architecture)
    if args.layers:
        arch["num_hidden_layers"] = args.layers
    if args.hidden:
        arch.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_attention_heads=4)
    AutoConfig.for_model(arch.pop("model_type"), **arch).save_pretrained(folder)
    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<unk>", "###", "Sentence", "Class", ":",
                                                  *LABELS, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)


# ---------------------------------------------------------------- one case


def cell_for(case: str, model_dir: Path, data_dir: Path, steps: int) -> Any:
    from tunebench.config.schema import CellConfig
    from tunebench.models.presets import NEOX_TARGETS

    spec = CASES[case]
    return CellConfig.model_validate({
        "model": {"name": str(model_dir), "random_weights": True},
        "method": spec["method"],
        "lora": {"target_modules": NEOX_TARGETS},
        "data": {"source": str(data_dir), "task": "classification", "validation_size": 0.02},
        "training": {**spec["training"], "epochs": 1, "max_steps": steps, "save_steps": steps},
        "cost": {"instance": "h200"},
    })


def steady_tokens_per_s(metrics: list[dict[str, Any]]) -> float | None:
    """Median of the logged throughputs after the first third of the run (warm-up, allocator growth)."""
    rates = [m["tokens_per_s"] for m in metrics if "tokens_per_s" in m]
    later = rates[len(rates) // 3:]
    return round(statistics.median(later), 1) if later else None


def run_case(case: str, model_dir: Path, data_dir: Path, out: Path, steps: int) -> dict[str, Any]:
    import torch

    from tunebench.rundir import RunDir
    from tunebench.train import train_cell

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run = RunDir(out / case)
    start = time.perf_counter()
    summary = train_cell(cell_for(case, model_dir, data_dir, steps), run, force=True, progress=False)
    metrics = [json.loads(line) for line in (run.train / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    plan = summary["plan"]
    return {
        "case": case, "steps": summary["steps"], "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None, "loss_fell": bool(losses) and losses[-1] < losses[0],
        "eval_loss": summary["eval_loss"], "tokens_seen": summary["tokens_seen"],
        "tokens_per_s": summary["tokens_per_s"], "tokens_per_s_steady": steady_tokens_per_s(metrics),
        "mfu": summary["mfu"], "peak_memory_gib": summary["peak_memory_gib"],
        "quantized_linear_layers": summary["quantized_linear_layers"],
        "train_time_s": summary["train_time_s"], "case_wall_s": round(time.perf_counter() - start, 1),
        "recipe": plan["recipe"], "method": plan["method"], "packing": plan["packing"],
        "precision": plan["precision"], "optimizer": plan["optimizer"], "quantization": plan["quantization"],
        "gradient_checkpointing": plan["gradient_checkpointing"],
        "tokens_per_batch": plan["tokens_per_batch"], "batch_size": plan["batch_size"],
        "gradient_accumulation": plan["gradient_accumulation"], "notes": summary["notes"],
        "device": summary["device"], "base_parameters": summary["base_parameters"],
    }


def versions() -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        print(f"unknown case(s) {unknown}; choose from {list(CASES)}", file=sys.stderr)
        return 2
    lines = []
    with tempfile.TemporaryDirectory(prefix="tunebench-train-gpu-") as tmp:
        root = Path(tmp)
        origin = write_data(root / "data", args.examples, random.Random(0))
        write_model_dir(root / "model", args)
        print(json.dumps({"check": "train_gpu", "lengths_from": origin, "versions": versions()}), flush=True)
        for case in cases:
            steps = args.steps or DEFAULT_STEPS[case]
            try:
                line = run_case(case, root / "model", root / "data", root / "runs", steps)
            except Exception as err:  # one failing case must not hide the others' numbers
                line = {"case": case, "error": f"{type(err).__name__}: {err}"}
            lines.append(line)
            print(json.dumps(line), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "train_gpu_check.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return 1 if any("error" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
