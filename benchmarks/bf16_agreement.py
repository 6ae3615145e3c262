"""Greedy agreement in bf16 with real weights: the batched engine offline (batched left-padded prefill, the
decode attention of the device: FlexAttention on CUDA, or as TUNEBENCH_DECODE_ATTENTION says) against padded
`model.generate`, on SAMSum validation dialogues, with ROUGE of each against the references.

    python benchmarks/bf16_agreement.py --model DIR [--data samsum/validation.jsonl] [--prompts 64] [--device cpu]

Random weights (the GPU benchmarks' 3B) give near-uniform next-token distributions, where bf16 rounding flips
many argmaxes whatever the engine; a trained model's margins are what the ">= 99% identical" rule is about.
Prints one JSON line: outputs identical to the first run's, ROUGE (x100) per run and the differences.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal model directory (real weights)")
    parser.add_argument("--data", default="/work/shared/datasets/samsum/validation.jsonl")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="padded engine's batch size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="padded:16,batched", help="engine[:batch size], comma-separated; the "
                        "first is the reference (padded at another batch size shows what batching alone changes)")
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunebench.evaluate.generation import generate
    from tunebench.evaluate.metrics import rouge

    started = time.monotonic()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()[:args.prompts]]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16).to(args.device).eval()
    asks = [f"Summarize this dialogue in one sentence.\n\n{r['dialogue'].strip()}" for r in rows]
    prompts = [tok.apply_chat_template([{"role": "user", "content": a}], tokenize=False, add_generation_prompt=True)
               if tok.chat_template else f"{a}\n\nSummary:" for a in asks]
    refs = [r["summary"] for r in rows]
    timings, texts = {}, {}
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for run in runs:
        engine, _, size = run.partition(":")
        t0 = time.monotonic()
        out = generate(model, tok, prompts, max_new_tokens=args.new_tokens,
                       batch_size=int(size or args.batch_size), engine=engine)
        timings[run] = round(time.monotonic() - t0, 1)
        texts[run] = [g.text.strip() for g in out]
    # ROUGE on the first line (the summary sentence; a cut-off second line would only add noise).
    scores = {run: rouge([t.split("\n")[0] for t in ts], refs) for run, ts in texts.items()}
    reference = runs[0]
    identical = {run: f"{sum(a == b for a, b in zip(texts[reference], ts, strict=True))}/{len(prompts)}"
                 for run, ts in texts.items() if run != reference}
    line = {"benchmark": "bf16_agreement", "model": Path(args.model).name, "device": args.device, "dtype": "bfloat16",
            "decode_attention": os.environ.get("TUNEBENCH_DECODE_ATTENTION", "default"),
            "prompts": len(prompts), "new_tokens": args.new_tokens, "reference": reference,
            "identical_to_reference": identical,
            "rouge": {e: {k: round(v, 2) for k, v in sc.items()} for e, sc in scores.items()},
            "rougeL_minus_reference_points": {run: round(scores[run]["rougeL"] - scores[reference]["rougeL"], 2)
                                              for run in runs[1:]},
            "seconds": timings, "wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(line), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
