"""The model a run trains: loaded in the plan's precision (4-bit for QLoRA), wrapped in LoRA where asked.

LoRA targets are the cell's `lora.target_modules`, else the preset's (the original study's GPT-NeoX layers,
all-linear elsewhere); every target must name existing modules, and `lora.options` go to peft's LoraConfig
as they are. Gradient checkpointing follows the plan; when the plan leaves it open (fast recipe on a GPU),
`fit_to_memory` finds the largest halving of the token budget whose estimated activations fit the free GPU
memory, once without checkpointing and once with it. Checkpointing is switched on when its budget is at least
CHECKPOINT_GAIN times the other (more tokens per step outweigh recomputing every layer's forward), or when not
even MIN_TOKENS_PER_BATCH fits without it. The free memory is read once the model is loaded, so the estimate
counts only what training adds (a 4-bit base is already there at its packed size). A per-process memory cap
(torch.cuda.set_per_process_memory_fraction) counts as the GPU's size.

With `Plan.fused_loss` the causal LM's forward computes its training loss with liger-kernel's fused linear
cross-entropy on the last hidden states (`install_fused_loss`): the vocabulary logits are never materialised.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

from tunebench.config.schema import CellConfig, ModelConfig
from tunebench.errors import UserError
from tunebench.models.loading import ModelSource, load_model, parameter_count
from tunebench.train.features import IGNORE
from tunebench.train.recipes import MIN_TOKENS_PER_BATCH, Plan

LINEAR_TYPES = ("Linear", "Linear4bit", "Linear8bitLt", "Conv1D")
# Saved activations per token, layer and hidden unit without checkpointing: 34 bytes for a plain 16-bit
# transformer (Korthikanti et al. 2022) plus LoRA's dropout copies of each target's input; 48 fits what the
# H200 runs showed (RedPajama-3B, 4 targets: 4 x 4096 tokens took 76 GiB, 2,048 tokens 14.5 GiB).
ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = 48
CHECKPOINTED_BYTES_PER_TOKEN_LAYER_HIDDEN = 2  # each layer's 16-bit input, plus one layer recomputed at a time
FULL_TRAINING_STATE_BYTES_PER_PARAM = 12  # fp32 gradient + AdamW's two moments
MEMORY_HEADROOM = 0.8
# Checkpointing recomputes each layer's forward: 3B bf16 LoRA on the H200 ran 14.3k tokens/s with it (32k tokens
# per step) against 20.0k without (16k), ~1.4x the time per token. Small steps cost more than that (QLoRA at
# 2,048 tokens: 6% MFU, bound by kernel launches and dequantisation), so from 4x the tokens per step it pays.
CHECKPOINT_GAIN = 4


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
    """`checkpointing`: through transformers (False when FSDP checkpoints the layers itself)."""
    model.config.use_cache = False  # a KV cache turns off transformers' packed-sequence (block-diagonal) masks
    if plan.fused_loss:
        install_fused_loss(model)
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
        if plan.precision != "fp32" and plan.quantization is None:
            keep_lora_inputs_in_compute_dtype(model)
        install_speed_knobs(model, plan)
    return model


def install_speed_knobs(model: Any, plan: Plan) -> None:
    from tunebench.train import fastlora

    if plan.fused_lora:
        fastlora.install_fused_lora(model, with_base=plan.fused_lora_linear)
    if plan.norms_in_compute_dtype:
        fastlora.install_norms_in_compute_dtype(model)
    if plan.fused_rope or plan.rope != "transformers":
        fastlora.install_rope(model, "liger" if plan.fused_rope else plan.rope)


def keep_lora_inputs_in_compute_dtype(model: Any) -> None:
    """peft casts every LoRA input to the adapter's fp32 before its dropout and matmuls; under the Trainer's
    autocast that is a full-size copy per target module and back (the H200 profile: copies 18% of GPU time, and
    dropout ran in fp32). Without the cast, autocast runs the small LoRA matmuls in bf16 on the bf16 activations
    while the adapter weights, their gradients and the optimizer stay fp32 (same loss, checked on CPU)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


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


def gpu_memory_budget(device: str) -> int:
    """Bytes this process may still allocate: free memory, or what a per-process cap leaves, whichever is less."""
    import torch

    index = torch.device(device).index or 0
    free, total = torch.cuda.mem_get_info(index)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _: 1.0)(index)  # torch >= 2.7
    cap = fraction * total
    return int(min(free, cap - torch.cuda.memory_reserved(index)))


def training_memory(model: Any, plan: Plan, tokens: int, checkpointing: bool, processes: int = 1) -> int:
    """Estimated bytes a micro-batch of `tokens` needs beyond the loaded weights."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", 24)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 1024)
    vocab = getattr(config, "vocab_size", 50_000)
    per_unit = CHECKPOINTED_BYTES_PER_TOKEN_LAYER_HIDDEN if checkpointing else ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
    activations = tokens * layers * hidden * per_unit
    if checkpointing:
        activations += tokens * hidden * ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN  # the layer being recomputed
    logits = 0 if plan.fused_loss else tokens * vocab * (2 + 4 + 4)  # bf16 logits, fp32 upcast, its gradient
    states = 0
    if plan.method == "full":
        states = FULL_TRAINING_STATE_BYTES_PER_PARAM * sum(p.numel() for p in model.parameters()) // processes
    return activations + logits + states


def largest_fitting_tokens(ceiling: int, need: Any, budget: float) -> int:
    """`ceiling` halved until `need(tokens)` bytes fit `budget`, but never below MIN_TOKENS_PER_BATCH."""
    tokens = ceiling
    while tokens > MIN_TOKENS_PER_BATCH and need(tokens) > budget:
        tokens //= 2
    return tokens


def fit_to_memory(model: Any, plan: Plan, device: str, processes: int = 1) -> Plan:
    """The plan fitted to what this GPU process may still allocate (`fit_plan`); on a CPU, no checkpointing."""
    if not device.startswith("cuda"):
        return dataclasses.replace(plan, gradient_checkpointing=bool(plan.gradient_checkpointing))
    return fit_plan(model, plan, MEMORY_HEADROOM * gpu_memory_budget(device), processes)


def fit_plan(model: Any, plan: Plan, budget: float, processes: int = 1) -> Plan:
    """The fast recipe's rule for `budget` bytes beyond the loaded weights: the token budget halved until it fits
    (when `size_to_memory`), with or without checkpointing as `choose_checkpointing` decides. Fixed choices stay."""
    if plan.gradient_checkpointing is not None and not plan.size_to_memory:
        return plan
    ceiling = plan.tokens_per_batch or (plan.batch_size or 1) * plan.max_seq_len

    def need(checkpointing: bool) -> Any:
        return lambda tokens: training_memory(model, plan, tokens, checkpointing, processes)

    def fitting(checkpointing: bool) -> int:
        return largest_fitting_tokens(ceiling, need(checkpointing), budget) if plan.size_to_memory else ceiling

    if plan.gradient_checkpointing is not None:
        checkpointing, tokens = plan.gradient_checkpointing, fitting(plan.gradient_checkpointing)
        why = "gradient_checkpointing as configured"
    else:
        plain = fitting(False)
        checkpointing, tokens, why = choose_checkpointing(plain, fitting(True), need(False)(plain) <= budget)
    note = (f"tokens_per_batch {tokens} and gradient_checkpointing {checkpointing}: fitted to "
            f"{budget / 2**30:.1f} GiB ({MEMORY_HEADROOM:.0%} of what this GPU process may allocate); {why}")
    return dataclasses.replace(plan, tokens_per_batch=tokens, max_seq_len=min(plan.max_seq_len, tokens),
                               gradient_checkpointing=checkpointing, notes=[*plan.notes, note])


def choose_checkpointing(plain: int, checkpointed: int, plain_fits: bool) -> tuple[bool, int, str]:
    """(checkpointing, tokens, why) from the token budgets that fit without and with checkpointing."""
    if not plain_fits:
        return True, checkpointed, f"checkpointing on: {plain} tokens do not fit without it, {checkpointed} with it"
    gain = checkpointed / plain
    verdict = "on" if gain >= CHECKPOINT_GAIN else "off"
    why = (f"checkpointing {verdict}: {checkpointed} tokens per batch fit with it, {plain} without "
           f"({gain:g}x; recomputing the layers pays from {CHECKPOINT_GAIN}x)")
    return (True, checkpointed, why) if verdict == "on" else (False, plain, why)


def liger_loss_sum() -> Any:
    """Sum of token cross-entropies from hidden states and the output head, in chunks (liger-kernel, CUDA)."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")


def install_fused_loss(model: Any, loss_sum: Any = None) -> Any:
    """Make a causal LM's forward, when given labels, return only the loss computed by `loss_sum(head weight,
    hidden [T, H], targets [T])`; the logits are left out. Normalisation is transformers' own: the sum over
    `num_items_in_batch` when the Trainer passes it (gradient accumulation), else the mean over targets."""
    import torch
    from transformers.modeling_outputs import CausalLMOutputWithPast

    loss_sum = loss_sum or liger_loss_sum()
    plain_forward = model.forward

    def forward(input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None, labels: Any = None,
                num_items_in_batch: Any = None, inputs_embeds: Any = None, **kwargs: Any) -> Any:
        if labels is None:
            return plain_forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 inputs_embeds=inputs_embeds, **kwargs)
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
        weight = model.get_output_embeddings().weight
        targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:]  # position t predicts t + 1
        total = loss_sum(weight, hidden.reshape(-1, hidden.shape[-1]).to(weight.dtype), targets.reshape(-1))
        count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
        loss = total / (count.to(total.device) if torch.is_tensor(count) else count)
        return CausalLMOutputWithPast(loss=loss)

    model.forward = forward
    return model


def local_device(cuda: bool) -> str:
    if not cuda:
        return "cpu"
    import torch

    rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(rank)
    return f"cuda:{rank}"
