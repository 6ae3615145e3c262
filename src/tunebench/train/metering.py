"""What a training run costs: tokens, time, memory, model FLOPs utilisation and money.

Tokens are non-pad tokens (padding-free rows have none; padded rows count their attention mask, unmasked causal
rows their `real_tokens`; seq2seq adds the decoder's target tokens). Examples are counted by their trained EOS
(every causal or seq2seq example ends with one; an encoder example is a row). Counts accumulate on the device
and are read only when logging, so counting never stalls the GPU.

MFU = tokens/s × k × N / peak, with N the base model's parameters and k = 4 FLOPs per token for LoRA/QLoRA
(forward 2N + backward through activations 2N; frozen weights need no weight gradients) and 6N for full
fine-tuning; the peak is the device's dense bf16 matmul rate.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

from tunebench.cost import Price, instance_for_device, resolve_price
from tunebench.errors import UserError
from tunebench.train.features import IGNORE

# Dense bf16 tensor-core peak, TFLOP/s. H100/H200: the 8192³ bf16 matmul measured on the lent H200 (the
# training-performance issue states its MFU targets against it); the others are NVIDIA's dense specs.
PEAK_TFLOPS = {"h200": 790.0, "h100": 790.0, "a100-80gb": 312.0, "a100-40gb": 312.0, "a10g": 125.0, "l4": 121.0,
               "t4": 65.0}


class Meter:
    """Non-pad tokens and examples trained on, plus time, carried across resumed sessions."""

    def __init__(self, kind: str, eos_id: int | None) -> None:
        self.kind = kind
        self.eos_id = eos_id
        self.tokens = 0
        self.examples = 0
        self.train_seconds_before = 0.0  # training time of earlier sessions (a resumed run)
        self.wall_seconds_before = 0.0
        self.session_start = time.perf_counter()
        self.train_start: float | None = None
        self._pending: list[Any] = []
        self._last_log = (0, 0.0)  # tokens and training seconds at the previous log

    def count(self, inputs: dict[str, Any]) -> None:
        labels = inputs["labels"]
        mask = inputs.get("attention_mask")
        if "real_tokens" in inputs:  # unmasked right-padded rows state their non-pad count
            tokens = inputs["real_tokens"]
        else:
            tokens = mask.sum() if mask is not None else inputs["input_ids"].numel()
        if self.kind == "seq2seq":
            tokens = tokens + (labels != IGNORE).sum()
        examples = labels.shape[0] if self.kind == "encoder" else (labels == self.eos_id).sum()
        self._pending.append((tokens, examples))

    def flush(self, accelerator: Any) -> None:
        """Add the pending counts of every process to the totals (all processes must call this together)."""
        import torch

        tokens = sum(int(t) for t, _ in self._pending)
        examples = sum(int(e) for _, e in self._pending)
        self._pending.clear()
        if accelerator.num_processes > 1:
            both = accelerator.reduce(torch.tensor([tokens, examples], device=accelerator.device), "sum")
            tokens, examples = (int(x) for x in both.tolist())
        self.tokens += tokens
        self.examples += examples

    def start_training(self) -> None:
        self.train_start = time.perf_counter()
        self._last_log = (self.tokens, self.train_seconds)

    def log_fields(self) -> dict[str, float]:
        """Throughput since the previous log, and the running totals, for a log record (after a flush)."""
        tokens, seconds = self._last_log
        now = self.train_seconds
        self._last_log = (self.tokens, now)
        return {"tokens": self.tokens, "examples": self.examples,
                "tokens_per_s": (self.tokens - tokens) / max(now - seconds, 1e-9),
                "peak_memory_gib": round(peak_memory_gib(), 3), "elapsed_s": round(now, 3)}

    @property
    def train_seconds(self) -> float:
        now = time.perf_counter()
        return self.train_seconds_before + (now - self.train_start if self.train_start is not None else 0.0)

    @property
    def wall_seconds(self) -> float:
        return self.wall_seconds_before + time.perf_counter() - self.session_start

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "examples": self.examples, "train_seconds": self.train_seconds,
                "wall_seconds": self.wall_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tokens = int(state["tokens"])
        self.examples = int(state["examples"])
        self.train_seconds_before = float(state["train_seconds"])
        self.wall_seconds_before = float(state["wall_seconds"])


def peak_memory_gib() -> float:
    """CUDA: the most memory tensors held on this GPU; CPU: the process's peak resident set."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (2**30 if sys.platform == "darwin" else 2**20)


def memory_kind() -> str:
    import torch

    return "cuda max_memory_allocated" if torch.cuda.is_available() else "process peak resident set (ru_maxrss)"


@dataclass(frozen=True)
class Mfu:
    value: float | None
    formula: str


def mfu(tokens_per_s: float, n_params: int, adapter: bool, device_name: str, world_size: int = 1) -> Mfu:
    k = 4 if adapter else 6
    try:
        peak = PEAK_TFLOPS.get(instance_for_device(device_name))
    except UserError:
        peak = None
    what = f"{k}N FLOPs/token ({'LoRA: no weight gradients' if adapter else 'full fine-tuning'}), N = {n_params:,}"
    if peak is None:
        return Mfu(None, f"tokens/s × {what} / peak; no bf16 peak known for '{device_name}'")
    value = tokens_per_s * k * n_params / (peak * 1e12 * world_size)
    return Mfu(value, f"tokens/s × {what} / ({world_size} × {peak:g} TFLOP/s dense bf16 peak)")


def price_for(instance: str | None, price_per_hour: float | None, device_name: str) -> tuple[Price | None, str]:
    try:
        return resolve_price(instance, price_per_hour, device_name), ""
    except UserError as err:
        return None, f"{err.problem}; set cost.instance or cost.price_per_hour to get a cost"


def cost_of(wall_seconds: float, price: Price | None, gpus: int) -> float | None:
    """Wall hours × price; per-GPU table prices scale with the GPUs used, a custom price is for the machine."""
    if price is None:
        return None
    machines = 1 if price.name == "custom" else max(1, -(-gpus // max(1, price.gpus)))
    return wall_seconds / 3600.0 * price.price_per_hour * machines
