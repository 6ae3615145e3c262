"""The model a run trains: loaded in the plan's precision (4-bit for QLoRA), wrapped in LoRA where asked.

LoRA targets are the cell's `lora.target_modules`, else the preset's (the original study's GPT-NeoX layers,
all-linear elsewhere); every target must name existing modules, and `lora.options` go to peft's LoraConfig
as they are. Gradient checkpointing follows the plan; when the plan leaves it open (fast recipe on a GPU) it
is switched on only if the estimated activations would not fit in the free GPU memory.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

from tunebench.config.schema import CellConfig, ModelConfig
from tunebench.errors import UserError
from tunebench.models.loading import ModelSource, load_model, parameter_count
from tunebench.train.recipes import Plan

LINEAR_TYPES = ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D")
ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = 34  # Korthikanti et al. 2022, 16-bit, memory-efficient attention
MEMORY_HEADROOM = 0.8


def training_dtype(cell: CellConfig, plan: Plan) -> str:
    """Frozen bases in the compute precision; full fine-tuning keeps fp32 master weights under autocast."""
    if cell.model.dtype != "auto":
        return cell.model.dtype
    if plan.method == "full" or plan.precision == "fp32":
        return "float32"
    return {"bf16": "bfloat16", "fp16": "float16"}[plan.precision]


def quantization_config(plan: Plan) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if plan.precision == "fp16" else torch.bfloat16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_base(cell: CellConfig, source: ModelSource, plan: Plan, device: str, num_labels: int | None) -> Any:
    cfg = cell.model.model_copy(update={"dtype": training_dtype(cell, plan)})
    if source.kind == "encoder" and not cfg.random_weights:
        return load_classifier(cfg, source, device, num_labels)
    if plan.quantization is None:
        return load_model(cfg, source, device=device, num_labels=num_labels)
    if not cfg.random_weights:
        return load_model(cfg, source, device=device, num_labels=num_labels, quantization=quantization_config(plan))
    # 4-bit quantization happens while loading saved weights, so random weights take a round trip via disk.
    with tempfile.TemporaryDirectory(prefix="tunebench-random-base-") as tmp:
        load_model(cfg, source, device=device, num_labels=num_labels).save_pretrained(tmp)
        saved = ModelConfig(name=tmp, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation)
        local = dataclasses.replace(source, location=tmp, local=True)
        return load_model(saved, local, device=device, num_labels=num_labels, quantization=quantization_config(plan))


def load_classifier(cfg: ModelConfig, source: ModelSource, device: str, num_labels: int | None) -> Any:
    """An encoder with a fresh head for this label set (a saved head for another label count is replaced)."""
    from transformers import AutoModelForSequenceClassification

    from tunebench.models.loading import hub_error, torch_dtype

    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source.location, num_labels=num_labels, ignore_mismatched_sizes=True, dtype=torch_dtype(cfg, device),
            trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, **extra)
    except OSError as err:
        raise hub_error(source.location, err) from None
    return model.to(device)


def base_parameters(model: Any, source: ModelSource, cell: CellConfig, plan: Plan) -> int:
    """N for the MFU estimate: 4-bit weights are packed two to a byte, so count those from the architecture."""
    if plan.quantization is not None and source.preset is not None:
        return parameter_count(source, cell.model)
    return sum(p.numel() * (2 if type(p).__name__ == "Params4bit" else 1) for p in model.parameters())


def prepare_model(model: Any, cell: CellConfig, source: ModelSource, plan: Plan, checkpointing: bool) -> Any:
    model.config.use_cache = False  # a KV cache turns off transformers' packed-sequence (block-diagonal) masks
    if plan.quantization is not None:
        from peft import prepare_model_for_kbit_training

        if plan.recipe == "original":  # as the original: norms and embeddings upcast to fp32
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
            checkpointing = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if plan.adapter:
        model = wrap_lora(model, cell, source)
    return model


def wrap_lora(model: Any, cell: CellConfig, source: ModelSource) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = cell.lora.target_modules or source.lora_targets
    check_targets(model, targets, cell.model.name)
    task = {"causal": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM, "encoder": TaskType.SEQ_CLS}[source.kind]
    allowed = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(cell.lora.options) - allowed)
    if unknown:
        settable = sorted(allowed - {"r", "lora_alpha", "lora_dropout", "target_modules"})
        raise UserError(f"lora.options: unknown peft LoraConfig field(s) {', '.join(unknown)}",
                        f"allowed: {', '.join(settable)}")
    try:
        config = LoraConfig(r=cell.lora.r, lora_alpha=cell.lora.alpha, lora_dropout=cell.lora.dropout,
                            target_modules=targets, task_type=task, **cell.lora.options)
    except (TypeError, ValueError) as err:
        raise UserError(f"lora.options {cell.lora.options}: {err}",
                        "fix the option values (see peft's LoraConfig)") from None
    return get_peft_model(model, config)


def linear_module_names(model: Any) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if name and type(module).__name__ in LINEAR_TYPES})


def check_targets(model: Any, targets: list[str] | str, model_name: str) -> None:
    if targets == "all-linear":
        return
    names = [name for name, _ in model.named_modules() if name]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        raise UserError(f"lora.target_modules: {', '.join(missing)} not found in model '{model_name}'",
                        f"linear modules that exist: {', '.join(linear_module_names(model))} (or 'all-linear')")


def needs_checkpointing(model: Any, plan: Plan, device: str) -> bool:
    """The fast recipe's rule: checkpoint activations only when the estimate exceeds free GPU memory."""
    if plan.gradient_checkpointing is not None:
        return plan.gradient_checkpointing
    import torch

    if not device.startswith("cuda"):
        return False
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 24)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 1024)
    vocab = getattr(config, "vocab_size", 50_000)
    tokens = plan.tokens_per_batch or (plan.batch_size or 1) * plan.max_seq_len
    activations = tokens * layers * hidden * ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
    logits = tokens * vocab * (2 + 4 + 4)  # bf16 logits, their fp32 upcast and its gradient
    free, _ = torch.cuda.mem_get_info()
    return activations + logits > MEMORY_HEADROOM * free


def local_device(cuda: bool) -> str:
    if not cuda:
        return "cpu"
    import torch

    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(rank)
    return f"cuda:{rank}"
