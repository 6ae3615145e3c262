"""Folding a LoRA adapter into its base: a standalone model + tokenizer for from_pretrained, TGI or vLLM.

The adapter is merged into a 16-bit (or fp32) copy of the base, never into a 4-bit one: a QLoRA adapter was
trained against the quantized base, but folding it into quantized weights would either fail or round the
update away, so the base is reloaded unquantized. `benchmarks/merge_gpu_check.py` measures how far the
merged model's logits are from the 4-bit base + adapter the adapter was trained with.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tunebench.config.schema import ModelConfig
from tunebench.errors import UserError
from tunebench.evaluate.loading import adapter_tokenizer, read_adapter_config, with_adapter
from tunebench.models.loading import load_model, load_tokenizer, resolve
from tunebench.rundir import write_json

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
MERGE_RECORD = "tunebench-merge.json"


def base_for(adapter: Path, base: ModelConfig | None) -> ModelConfig:
    """The base to merge into: the run's model section, else the base the adapter records."""
    if base is not None:
        return base
    recorded = read_adapter_config(adapter).get("base_model_name_or_path")
    if not recorded:
        raise UserError(f"{adapter}/adapter_config.json does not name its base model",
                        "merge with --run DIR, whose configuration names the base")
    return ModelConfig(name=recorded)


def merge_adapter(adapter: Path, out: Path, *, base: ModelConfig | None = None, dtype: str = "bf16",
                  device: str | None = None) -> dict[str, Any]:
    """Merge `adapter` into its base in `dtype` and save model + tokenizer to `out`; returns the merge record."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype} is not supported", f"allowed: {', '.join(DTYPES)}")
    adapter, out = Path(adapter), Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty", "choose a new directory, or remove it first")
    model_cfg = base_for(adapter, base).model_copy(update={"dtype": DTYPES[dtype]})
    if model_cfg.random_weights:
        raise UserError(f"the base of {adapter} has random weights, which are drawn anew on every load",
                        "merge adapters trained on a saved base model (a preset, hub id or local path)")
    start = time.perf_counter()
    source = resolve(model_cfg)
    model = load_model(model_cfg, source, device=device)  # unquantized, whatever the adapter was trained on
    merged = with_adapter(model, adapter, source).merge_and_unload()
    tokenizer = adapter_tokenizer(adapter) or load_tokenizer(source, model_cfg)
    record = {"adapter": str(adapter), "base": model_cfg.name, "base_location": source.location, "dtype": dtype,
              "adapter_config": read_adapter_config(adapter), "seconds": 0.0}
    save_atomically(merged, tokenizer, out, record, start)
    return record


def save_atomically(model: Any, tokenizer: Any, out: Path, record: dict[str, Any], start: float) -> None:
    """Write into a sibling temporary directory and rename, so `out` is never a half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record["seconds"] = round(time.perf_counter() - start, 2)
        write_json(tmp / MERGE_RECORD, record)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
