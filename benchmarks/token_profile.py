"""Token-length profile of the real training data in the fine-tuning format, for the GPU benchmarks.

The device machine cannot see the real data, so the throughput benchmarks sample sequence lengths from the
histograms this script writes to benchmarks/data/token_profile.json (kept small and committed). It reads
$TUNEBENCH_SHARED/datasets/{newsgroups,samsum}/train.jsonl through tunebench's own loader (bad rows dropped
and counted), renders each example as the training sequence (`###Sentence:{text}###Class:{label}` or
`###Dialogue:{dialogue}###Summary:{summary}`, plus the EOS token the trainer appends) and counts tokens with
the embedded SmolLM2 tokenizer. Newsgroup headers are stripped, as in the header-stripped hub export the
original study trained on.

    TUNEBENCH_SHARED=../shared .venv/bin/python benchmarks/token_profile.py

Prints one JSON line (the per-dataset summaries).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from tunebench.config.schema import CleaningConfig, DataConfig, ModelConfig, PromptConfig
from tunebench.data import load_source
from tunebench.data.lengths import histogram, length_stats, percentile, token_lengths
from tunebench.models.loading import load_tokenizer, resolve
from tunebench.prompts import PromptBuilder
from tunebench.rundir import write_json

OUT = Path(__file__).resolve().parent / "data" / "token_profile.json"
DATASETS = {
    "newsgroups": {"task": "classification", "cleaning": {"strip_headers": True}},
    "samsum": {"task": "summarization", "cleaning": {}},
}
# Fine bins where most sequences fall, coarser ones in the long tail; the last edge closes at the maximum.
FINE, MEDIUM, COARSE = range(0, 512, 16), range(512, 2048, 64), range(2048, 8192, 512)


def bin_edges(longest: int) -> list[int]:
    edges = [*FINE, *MEDIUM, *COARSE]
    edges = [e for e in edges if e <= longest] or [0]
    return [*edges, longest + 1]


def stats(lengths: list[int]) -> dict[str, Any]:
    return {**length_stats(lengths), "p99": percentile(sorted(lengths), 99)}


def profile(name: str, spec: dict[str, Any], shared: Path, tokenizer: Any, progress: Progress) -> dict[str, Any]:
    source = shared / "datasets" / name / "train.jsonl"
    cfg = DataConfig(source=str(source), task=spec["task"], cleaning=CleaningConfig(**spec["cleaning"]))
    loaded = load_source(cfg)
    examples = loaded.splits["train"]
    # An unbounded context: the profile records the lengths as they are; benchmarks apply their own cap.
    builder = PromptBuilder(PromptConfig(), cfg.task, tokenizer, labels=loaded.labels, train_examples=[],
                            use_chat_template=False, context_length=10**9)
    bar = progress.add_task(f"rendering {name}", total=len(examples))
    pairs = []
    for ex in examples:
        pairs.append(builder.finetune_pair(ex))
        progress.advance(bar)
    prompts = token_lengths(tokenizer, [p for p, _ in pairs], special_tokens=True)
    completions = [n + 1 for n in token_lengths(tokenizer, [c for _, c in pairs])]  # + EOS
    sequences = [n + 1 for n in token_lengths(tokenizer, [p + c for p, c in pairs], special_tokens=True)]
    edges = bin_edges(max(sequences))
    return {
        "source": f"$TUNEBENCH_SHARED/datasets/{name}/train.jsonl",
        "task": cfg.task,
        "cleaning": {k: v for k, v in cfg.cleaning.model_dump().items() if v},
        "rows": len(examples),
        "dropped": dict(loaded.dropped),
        "sequence": stats(sequences),
        "prompt": stats(prompts),
        "completion": stats(completions),
        "histogram": {"edges": edges, "counts": histogram(sequences, edges)},
    }


def main() -> None:
    shared = Path(os.environ.get("TUNEBENCH_SHARED", ""))
    if not (shared / "datasets").is_dir():
        sys.exit("set TUNEBENCH_SHARED to the directory holding datasets/ (e.g. ../shared)")
    start = time.perf_counter()
    model = ModelConfig()
    tokenizer = load_tokenizer(resolve(model), model)
    with Progress() as progress:
        datasets = {name: profile(name, spec, shared, tokenizer, progress) for name, spec in DATASETS.items()}
    write_json(OUT, {
        "description": "token lengths of the training sequences (prompt + completion + EOS) in the fine-tuning "
                       "format; histogram bins are [edges[i], edges[i+1])",
        "tokenizer": f"{model.name} (HuggingFaceTB/SmolLM2-135M-Instruct)",
        "format": {"classification": "###Sentence:{text}###Class:{label}<eos>",
                   "summarization": "###Dialogue:{dialogue}###Summary:{summary}<eos>"},
        "generated_by": "benchmarks/token_profile.py",
        "datasets": datasets,
    })
    summary = {name: {"rows": d["rows"], **d["sequence"]} for name, d in datasets.items()}
    print(json.dumps({"benchmark": "token_profile", "out": str(OUT), "seconds": round(time.perf_counter() - start, 1),
                      "datasets": summary}))


if __name__ == "__main__":
    main()
