"""Recipes: turning a cell's `training:` section into every concrete hyperparameter of one run.

`original` reproduces the original study (QLoRA nf4 with double quantization and fp16 compute, LoRA r8/α32/
dropout 0.1 on the preset targets, 512-token rows of concatenated examples with attention across them, batch 1
× gradient accumulation 4, gradient checkpointing, paged AdamW 32-bit, constant LR 2e-4 after 3 % warmup, max
grad norm 0.3, 5 epochs for classification and 1 for summarization). `fast` keeps the same LoRA settings,
learning rate, schedule, clipping and epochs, and changes only how the work is done: bf16, batches without
cross-example attention, token-budget batches, a fused optimizer, and gradient checkpointing only when memory
needs it. Any field set in `training:` wins over the recipe. What a device cannot do (4-bit or
fp16 on CPU, paged optimizers without bitsandbytes) is replaced and written down in `Plan.notes`.

`fast` for causal LMs on CUDA (measured on the H200 with benchmarks/train_throughput.py, see README):
- batches of examples of similar length, right-padded, with NO attention mask: causal attention never lets a
  real token see the padding to its right, so SDPA runs its flash kernel with `is_causal` instead of the
  memory-efficient kernel over a dense block-diagonal mask, whose cost grows with the packed row squared.
  Padding-free packing (position ids) stays available as `training.packing: padding_free`.
- token budget: FAST_CUDA_TOKENS_PER_BATCH tokens per micro-batch (and optimizer step), lowered by halves
  until the activation estimate fits the GPU's free memory (or a per-process memory cap), once without and
  once with gradient checkpointing. Checkpointing is used when it fits at least CHECKPOINT_GAIN (4) times the
  tokens (small steps are launch-bound, recomputing the layers costs ~1.4x), or when even
  MIN_TOKENS_PER_BATCH does not fit without it (modeling.fit_plan).
- liger-kernel's fused linear cross-entropy when it is importable: the 50k-vocabulary logits are never
  materialised (the head's matmul and the loss run in chunks).
Learning dynamics: a larger budget means fewer optimizer steps for the same tokens (8x fewer than the
original's 4 x 512 at 16k). LoRA targets, rank, alpha, dropout, learning rate, schedule and clipping stay the
original's, so at equal *tokens* early in training `fast` may trail `original`; the benchmark reports the loss
at equal token counts next to the throughput so the trade is visible, and the budget is a setting
(`training.tokens_per_batch`) for anyone who prefers more, smaller steps. Length grouping also changes what a
step averages over: a batch holds examples of one length class (many short ones or a few long ones) and its
loss is the mean over its targets, as in transformers' own `group_by_length`; `packing: padding_free` mixes
lengths in every batch instead, at the cost of masked attention.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from tunebench.config.schema import CellConfig
from tunebench.errors import UserError

ORIGINAL_ROW_TOKENS = 512
FAST_TOKENS_PER_BATCH = 2048  # tokens per optimizer step, as the original (4 rows × 512)
FAST_CUDA_TOKENS_PER_BATCH = 16384  # the ceiling on a GPU; lowered to fit memory (modeling.fit_to_memory)
MIN_TOKENS_PER_BATCH = 2048
PADDED_PACKINGS = ("length_grouped", "none")
PADDED_BATCH_ROWS = 16
LORA_LEARNING_RATE = 2e-4
FULL_LEARNING_RATE = 2e-5
ORIGINAL_MAX_GRAD_NORM = 0.3
CAUSAL_ONLY_PACKING = ("padding_free", "concat")


@dataclass(frozen=True)
class Device:
    """What the run's device can do; decided once, so plans are testable without a GPU."""

    cuda: bool
    bf16: bool = False
    bitsandbytes: bool = False
    liger: bool = False  # liger_kernel importable and CUDA present (its Triton kernels need a GPU)

    @classmethod
    def detect(cls) -> Device:
        import torch

        cuda = torch.cuda.is_available()
        return cls(cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
                   bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None,
                   liger=cuda and liger_importable())


def liger_importable() -> bool:
    """liger-kernel's fused linear cross-entropy imports (it needs Triton and a compatible torch)."""
    if importlib.util.find_spec("liger_kernel") is None:
        return False
    try:
        import liger_kernel.transformers.fused_linear_cross_entropy  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Plan:
    recipe: str
    kind: str                       # causal | seq2seq | encoder
    method: str                     # lora | qlora | full
    epochs: int
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    packing: str                    # none | padding_free | concat | length_grouped
    batch_size: int | None          # rows per micro-batch; None: only the token budget limits it
    tokens_per_batch: int | None    # token budget per micro-batch (padding_free, length_grouped)
    gradient_accumulation: int
    max_seq_len: int
    gradient_checkpointing: bool | None  # None: decided from the memory estimate once the model is loaded
    optimizer: str
    max_grad_norm: float
    precision: str                  # fp32 | bf16 | fp16 (autocast dtype; fp32 means none)
    quantization: str | None        # "nf4" for QLoRA
    loss_on: str
    notes: list[str] = field(default_factory=list)
    attention_mask: bool = True     # False: causal right-padded rows without a mask (SDPA flash, is_causal)
    fused_loss: bool = False        # liger-kernel fused linear cross-entropy (CUDA, liger_kernel importable)
    compile: bool = False           # torch.compile through the Trainer
    size_to_memory: bool = False    # tokens_per_batch is a ceiling, lowered once the model is loaded
    # train/fastlora.py, the `fast` recipe's bf16 LoRA on CUDA (measured on the H200, see README):
    fused_lora: bool = False        # LoRA's adapter path as one autograd function
    fused_lora_linear: bool = False  # ... with the frozen base layer's matmul in the same function
    flash_sdpa: bool = False        # SDPA without cuDNN while training (no per-shape graph builds)
    norms_in_compute_dtype: bool = False  # LayerNorm outputs bf16 under autocast
    fused_rope: bool = False        # GPT-NeoX rotary embedding as liger-kernel's kernel (override only)
    rope: str = "transformers"      # GPT-NeoX rotary: transformers | compiled | split | liger (fastlora.install_rope)
    sync_free_steps: bool = False   # no host-device syncs between logs (non-blocking batch copies, no NaN check)

    @property
    def adapter(self) -> bool:
        return self.method in ("lora", "qlora")


def resolve_plan(cell: CellConfig, kind: str, device: Device, context_length: int) -> Plan:
    if cell.method not in ("lora", "qlora", "full"):
        raise UserError(f"method '{cell.method}' has nothing to train",
                        "'tunebench train' runs method lora, qlora or full; prompting methods go to 'tunebench eval'")
    check_method_and_kind(cell, kind, device)
    t = cell.training
    notes: list[str] = []
    original = t.recipe == "original"
    packing = t.packing or default_packing(t.recipe, kind)
    if packing in CAUSAL_ONLY_PACKING and kind != "causal":
        raise UserError(f"training.packing = {packing!r} needs a causal language model; this one is {kind}",
                        "use training.packing: none or length_grouped for seq2seq and encoder models")
    # Only causal LMs were measured with large budgets; encoders and seq2seq keep the original's step size.
    gpu_budget = not original and device.cuda and kind == "causal" and t.tokens_per_batch is None
    tokens = t.tokens_per_batch or (None if original else FAST_CUDA_TOKENS_PER_BATCH if gpu_budget
                                    else FAST_TOKENS_PER_BATCH)
    if packing == "padding_free" and tokens is None:
        tokens = (t.batch_size or 1) * ORIGINAL_ROW_TOKENS
    max_seq_len = sequence_limit(t.max_seq_len, original, packing, tokens, context_length)
    if original and cell.method != "qlora":
        notes.append("base weights not quantized: the original study's exact setup is method: qlora")
    return Plan(
        recipe=t.recipe, kind=kind, method=cell.method,
        # generation (extraction, QA): short targets and a small sample, nearer classification than summaries
        epochs=t.epochs or {"classification": 5, "generation": 3}.get(cell.data.task, 1),
        learning_rate=t.learning_rate or (FULL_LEARNING_RATE if cell.method == "full" else LORA_LEARNING_RATE),
        lr_scheduler=t.lr_scheduler, warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay,
        packing=packing, batch_size=rows_per_batch(t.batch_size, packing, original, tokens, max_seq_len),
        tokens_per_batch=tokens, gradient_accumulation=t.gradient_accumulation or (4 if original else 1),
        max_seq_len=max_seq_len,
        gradient_checkpointing=t.gradient_checkpointing if t.gradient_checkpointing is not None
        else (True if original else None if device.cuda else False),
        optimizer=t.optimizer or default_optimizer(original, device, notes),
        max_grad_norm=t.max_grad_norm or ORIGINAL_MAX_GRAD_NORM,
        precision=precision(original, device, notes),
        quantization="nf4" if cell.method == "qlora" else None,
        loss_on=t.loss_on, notes=notes,
        attention_mask=original or kind != "causal" or packing not in PADDED_PACKINGS,
        fused_loss=not original and kind == "causal" and device.liger,
        size_to_memory=gpu_budget,
        **speed_knobs(original, kind, cell.method, device),
    )


def speed_knobs(original: bool, kind: str, method: str, device: Device) -> dict[str, bool | str]:
    """The fast recipe's kernel choices for bf16 LoRA of a causal LM on CUDA (each one the same computation; the
    first three measured 21.0k -> 27.4k tokens/s on the H200). `fused_rope` (liger's rope, measured slower)
    stays a plan override. `sync_free_steps` holds for every `fast` run on CUDA: it changes no number."""
    on = not original and device.cuda and device.bf16 and kind == "causal" and method == "lora"
    return {"fused_lora": on, "fused_lora_linear": on, "flash_sdpa": on, "norms_in_compute_dtype": on,
            "fused_rope": False, "rope": "compiled" if on else "transformers",
            "sync_free_steps": not original and device.cuda}


def check_method_and_kind(cell: CellConfig, kind: str, device: Device) -> None:
    if cell.method == "qlora" and not device.cuda:
        raise UserError("method 'qlora' loads the base model in 4-bit with bitsandbytes, which needs a CUDA GPU; "
                        "none is available here", "use method: lora on this machine, or run on a GPU")
    if cell.method == "qlora" and not device.bitsandbytes:
        raise UserError("method 'qlora' needs the bitsandbytes package, which is not installed",
                        "pip install -e '.[gpu]'")
    if cell.method == "qlora" and kind == "encoder":
        raise UserError("method 'qlora' is for generative models; encoder classifiers are fine-tuned in full",
                        "use method: full (or lora) for BERT-style models")


def sequence_limit(asked: int | None, original: bool, packing: str, tokens: int | None, context: int) -> int:
    """Longest example (or concatenated row) in tokens: never beyond the context, nor beyond a token budget."""
    limit = asked or (ORIGINAL_ROW_TOKENS if original else tokens or context)
    if packing in ("padding_free", "length_grouped") and tokens is not None:
        limit = min(limit, tokens)
    return min(limit, context)


def rows_per_batch(asked: int | None, packing: str, original: bool, tokens: int | None, row_len: int) -> int | None:
    """Rows per micro-batch; None when the token budget alone decides (padding-free, length-grouped)."""
    if asked or original:
        return asked or 1
    if packing == "padding_free" or (packing == "length_grouped" and tokens):
        return None
    if packing == "concat" and tokens:
        return max(1, tokens // row_len)
    return PADDED_BATCH_ROWS


def default_packing(recipe: str, kind: str) -> str:
    """Padded rows of similar lengths for `fast`: causal rows need no mask then (see the module docstring),
    which keeps flash-class attention on a GPU and the cheap causal kernel on a CPU."""
    if recipe == "original":
        return "concat" if kind == "causal" else "none"
    return "length_grouped"


def default_optimizer(original: bool, device: Device, notes: list[str]) -> str:
    if not original:
        return "adamw_torch_fused" if device.cuda else "adamw_torch"
    if device.cuda and device.bitsandbytes:
        return "paged_adamw_32bit"
    why = "no CUDA" if not device.cuda else "bitsandbytes is not installed"
    notes.append(f"optimizer: adamw_torch instead of the original's paged_adamw_32bit ({why})")
    return "adamw_torch"


def precision(original: bool, device: Device, notes: list[str]) -> str:
    if not device.cuda:
        if original:
            notes.append("precision: fp32 instead of the original's fp16 compute (no CUDA)")
        return "fp32"
    if original:
        return "fp16"
    return "bf16" if device.bf16 else "fp16"
