"""Greedy agreement in bf16 with real weights: the batched engine offline (batched left-padded prefill, the
decode attention of the device: FlexAttention on CUDA, or as TUNEBENCH_DECODE_ATTENTION says) against padded
`model.generate`, on SAMSum validation dialogues, with ROUGE of each against the references.

    python benchmarks/bf16_agreement.py --model DIR [--data samsum/validation.jsonl] [--prompts 64] [--device cpu]

Random weights (the GPU benchmarks' 3B) give near-uniform next-token distributions, where bf16 rounding flips
many argmaxes whatever the engine; a trained model's margins are what the ">= 99% identical" rule is about.
With a run spelled `batched+fp8w` the engine runs FP8 weights (`tunebench.serve.weights`) on a copy of the model.
Prints one JSON line: outputs identical to the first run's, ROUGE (x100) per run and the differences, and for
the outputs that differ, where they part: the first differing token's index, and the logit margin there between
the reference's token and the other run's, recomputed on one row (no batch) in fp32 and in bf16. A near-tie (a
margin within bf16's rounding of logits, ~0.1 at these magnitudes) is a fork that any change of batch composition
can flip; a large margin would be an engine error.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def where_they_part(model: Any, tok: Any, prompts: list[str], reference: list[tuple[int, ...]],
                    other: list[tuple[int, ...]]) -> dict[str, Any]:
    """For each pair of outputs whose ids differ: the first differing index and the margin there, logit of the
    reference's token minus the other's, from one unbatched forward pass over prompt + common prefix, in fp32 (a
    float32 copy of the weights) and in the run's bf16."""
    import statistics

    import torch

    from tunebench.evaluate.generation import encode

    exact = copy.deepcopy(model).float()
    at, fp32, bf16 = [], [], []
    for prompt, a, b in zip(prompts, reference, other, strict=True):
        k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if k is None:
            continue  # the same ids (texts may still differ after an end token: not a fork)
        ids = torch.tensor([encode(tok, prompt) + list(a[:k])], device=model.device)
        with torch.inference_mode():
            for weights, out in ((exact, fp32), (model, bf16)):
                logits = weights(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
                out.append(float(logits[a[k]] - logits[b[k]]))
        at.append(k)
    del exact

    def spread(values: list[float]) -> dict[str, float] | None:
        if not values:
            return None
        size = sorted(abs(v) for v in values)
        return {"median_abs": round(statistics.median(size), 4), "max_abs": round(size[-1], 4),
                "under_0.1": sum(v < 0.1 for v in size), "under_0.5": sum(v < 0.5 for v in size)}

    return {"forks": len(at), "first_differing_token": {"median": statistics.median(at), "min": min(at)} if at
            else None, "margin_fp32": spread(fp32), "margin_bf16": spread(bf16),
            "reference_ahead_in_fp32": sum(m > 0 for m in fp32)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a causal model directory (real weights)")
    parser.add_argument("--data", default="/work/shared/datasets/samsum/validation.jsonl")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16, help="padded engine's batch size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default="padded:16,batched", help="engine[:batch size][+fp8w], comma-separated; "
                        "the first is the reference (padded at another batch size shows what batching alone "
                        "changes); +fp8w runs the batched engine with TUNEBENCH_WEIGHT_DTYPE=fp8 on a copy")
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
    timings, texts, outputs = {}, {}, {}
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    for run in runs:
        spec, fp8_weights = run.removesuffix("+fp8w"), run.endswith("+fp8w")
        engine, _, size = spec.partition(":")
        t0 = time.monotonic()
        # FP8 weights replace the engine's model's linear layers in place: that run gets a copy.
        weights = copy.deepcopy(model) if fp8_weights else model
        os.environ["TUNEBENCH_WEIGHT_DTYPE"] = "fp8" if fp8_weights else "auto"
        out = generate(weights, tok, prompts, max_new_tokens=args.new_tokens,
                       batch_size=int(size or args.batch_size), engine=engine)
        del weights
        timings[run] = round(time.monotonic() - t0, 1)
        texts[run] = [g.text.strip() for g in out]
        outputs[run] = [g.ids for g in out]
    # ROUGE on the first line (the summary sentence; a cut-off second line would only add noise).
    scores = {run: rouge([t.split("\n")[0] for t in ts], refs) for run, ts in texts.items()}
    reference = runs[0]
    identical = {run: f"{sum(a == b for a, b in zip(texts[reference], ts, strict=True))}/{len(prompts)}"
                 for run, ts in texts.items() if run != reference}
    forks = {run: where_they_part(model, tok, prompts, outputs[reference], outputs[run])
             for run in runs[1:]}
    line = {"benchmark": "bf16_agreement", "model": Path(args.model).name, "device": args.device, "dtype": "bfloat16",
            "decode_attention": os.environ.get("TUNEBENCH_DECODE_ATTENTION", "default"),
            "prompts": len(prompts), "new_tokens": args.new_tokens, "reference": reference,
            "identical_to_reference": identical,
            "rouge": {e: {k: round(v, 2) for k, v in sc.items()} for e, sc in scores.items()},
            "rougeL_minus_reference_points": {run: round(scores[run]["rougeL"] - scores[reference]["rougeL"], 2)
                                              for run in runs[1:]},
            "where_they_part": forks, "seconds": timings, "wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(line), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
