"""Merging a QLoRA adapter: how far is the merged 16-bit model from the 4-bit base + adapter? (CUDA only)

    python benchmarks/merge_gpu_check.py [--model small-llama|redpajama-3b] [--prompts 4]

A QLoRA adapter is trained against a 4-bit (NF4) base, but `tunebench merge` folds it into the 16-bit base.
This builds a random-weight base (a small llama, or the RedPajama-INCITE-3B architecture), trains nothing but
gives a LoRA adapter random, non-zero matrices on the 4-bit base, then compares last-position logits on a few
prompts of:

    4-bit base + adapter (what QLoRA trained)  vs  merged 16-bit model (what `tunebench merge` writes)

and, to tell the sources apart, the 16-bit base + unmerged adapter (the merge's own error) and the 4-bit vs
16-bit base alone (the quantization error). Prints one JSON line. Needs bitsandbytes (carry it as a wheel).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Summarize the conversation. Anna: lunch at noon? Ben: sure, see you there.\nSummary:",
    "###Sentence:The pitcher threw a no-hitter in the ninth inning.###Class:",
    "The rocket reached orbit and deployed the satellite over the Pacific, then",
    "Simmer the onions in butter until golden, then add the garlic and",
    "The city council voted to raise the budget for road repairs because",
    "Solder the resistor to the board and check the voltage with a meter before",
]
SMALL_LLAMA = {"model_type": "llama", "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
               "num_attention_heads": 16, "num_key_value_heads": 8, "vocab_size": 32000,
               "max_position_embeddings": 2048, "tie_word_embeddings": False}
LORA_B_SCALE = 0.05  # random B matrices at 5% of peft's init_lora_weights=False scale: a visible, sane update


def tokenizer_for(out: Path) -> Any:
    """A small byte-level BPE trained here (the device has no model hub), saved beside the base."""
    from bpe import train_byte_bpe

    return train_byte_bpe(PROMPTS * 10, 500, out)


def build_base(name: str, out: Path) -> int:
    """A random-weight base in bf16, saved with save_pretrained; returns its parameter count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunebench.models.presets import PRESETS

    arch = dict(SMALL_LLAMA if name == "small-llama" else PRESETS[name].architecture)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch.pop("model_type"), **arch),
                                             dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer_for(out)
    return sum(p.numel() for p in model.parameters())


def four_bit(base: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(base, quantization_config=quant, dtype=torch.bfloat16)


def sixteen_bit(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda")


def make_qlora_adapter(base: Path, out: Path, targets: list[str]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(four_bit(base), LoraConfig(r=16, lora_alpha=32, target_modules=targets,
                                                      init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(LORA_B_SCALE)
    model.save_pretrained(out)


def last_logits(model: Any, tok: Any, prompts: list[str]) -> Any:
    import torch

    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").to("cuda")
            rows.append(model(**ids).logits[0, -1].float())
    return torch.stack(rows)


def compare(a: Any, b: Any) -> dict[str, float]:
    diff = (a - b).abs()
    return {"max_abs": round(float(diff.max()), 5), "mean_abs": round(float(diff.mean()), 6),
            "mean_abs_over_logit_std": round(float(diff.mean() / b.std()), 6),
            "top1_agreement": round(float((a.argmax(-1) == b.argmax(-1)).float().mean()), 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small-llama", choices=["small-llama", "redpajama-3b"])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "needs a CUDA GPU and bitsandbytes (4-bit NF4)"}))
        return 0
    from peft import PeftModel
    from transformers import AutoTokenizer

    from tunebench.config.schema import ModelConfig
    from tunebench.evaluate.merge import merge_adapter
    from tunebench.models.presets import LLAMA_TARGETS, NEOX_TARGETS

    targets = LLAMA_TARGETS if args.model == "small-llama" else NEOX_TARGETS
    prompts = PROMPTS[:args.prompts]
    with tempfile.TemporaryDirectory(prefix="merge-check-") as tmp:
        base, adapter, merged_dir = Path(tmp, "base"), Path(tmp, "adapter"), Path(tmp, "merged")
        params = build_base(args.model, base)
        make_qlora_adapter(base, adapter, targets)
        tok = AutoTokenizer.from_pretrained(base)
        start = time.perf_counter()
        merge_adapter(adapter, merged_dir, base=ModelConfig(name=str(base)), dtype="bf16")
        merge_seconds = time.perf_counter() - start
        trained = last_logits(PeftModel.from_pretrained(four_bit(base), adapter), tok, prompts)
        merged = last_logits(sixteen_bit(merged_dir), tok, prompts)
        unmerged = last_logits(PeftModel.from_pretrained(sixteen_bit(base), adapter), tok, prompts)
        base16 = last_logits(sixteen_bit(base), tok, prompts)
        base4 = last_logits(four_bit(base), tok, prompts)
    print(json.dumps({
        "benchmark": "merge_gpu_check", "model": args.model, "parameters": params, "prompts": len(prompts),
        "device": torch.cuda.get_device_name(0), "merge_s": round(merge_seconds, 2),
        "qlora_4bit_plus_adapter_vs_merged_bf16": compare(merged, trained),
        "merge_error_bf16_unmerged_vs_merged": compare(merged, unmerged),
        "quantization_error_4bit_vs_bf16_base": compare(base4, base16),
        "adapter_effect_bf16_base_vs_with_adapter": compare(unmerged, base16),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
