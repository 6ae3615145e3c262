"""FP8 weights for the batched engine (opt-in: TUNEBENCH_WEIGHT_DTYPE=fp8; issue 20).

Why: at a full batch a decode step's projection matmuls are compute-bound (~4 of the 14 ms of a 512-row step of
the 3B on an H100, lead-29), and a prefill is nearly all matmul, so bf16's dense peak bounds both. Hopper and Ada
run FP8 matmuls at twice that rate.

What: every `nn.Linear` of the model except the LM head and LoRA's own matrices becomes an `Fp8Linear`, as
vLLM's `quantization="fp8"` does to an unquantized checkpoint: the weight in float8_e4m3fn with one scale per
output channel (its absolute maximum over 448, the format's largest finite value), each activation row quantized
on the fly with its own scale, and torch's `_scaled_mm` applying both scales and writing the model's dtype.
The bias is added after the matmul: lead-34's build, which used torchao's
`Float8DynamicActivationFloat8WeightConfig`, failed in cuBLASLt inside a biased row-wise `_scaled_mm`, and its
next burst failed for a reason its log did not keep. That build's weights were tensor subclasses whose one
dispatch function serves every layer and shape; here the layer is a plain module that the engine's compiled
decoder layer traces like any other. Alone, the two run at about the same speed (`benchmarks/fp8_matmul.py`,
lead-35 on an H100: 0.51-1.15x bf16 for this one, 0.49-1.33x for torchao's); in the engine's burst this one
gave 1.073x (prefill 13% faster, decode 3.5%). Layers whose dimensions are not multiples of 16 (which
`_scaled_mm` needs) stay in the model's dtype.

Outputs differ from bf16 (FP8 keeps 3 mantissa bits), so it is off by default, as the FP8 KV cache is; the two
combine. The engine quantizes before it sizes the KV cache, so the freed bytes become slots. On a GPU below
compute capability 8.9 the setting is refused; on the CPU torch emulates the FP8 matmul (for tests).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from tunebench.errors import UserError, setting_choice
from tunebench.serve.kvcache import FP8, FP8_MAX

log = logging.getLogger("tunebench.serve")
ENV = "TUNEBENCH_WEIGHT_DTYPE"
CHOICES = ("auto", "fp8")  # auto: the model's own dtype; fp8: Fp8Linear projections
MIN_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with FP8 tensor cores


def weight_dtype() -> str:
    """TUNEBENCH_WEIGHT_DTYPE (default auto), validated."""
    return setting_choice(ENV, CHOICES)


def check_device(device: Any) -> None:
    """FP8 matmuls need FP8 tensor cores on CUDA; the CPU emulates them."""
    if getattr(device, "type", str(device)) != "cuda":
        log.warning("%s=fp8 on the CPU: torch emulates FP8 matmuls there (for tests: it says nothing of a GPU's speed)",
                    ENV)
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise UserError(f"{ENV}=fp8 needs a GPU of compute capability 8.9 or newer (H100, H200, L4, L40S); "
                        f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}",
                        f"unset {ENV} (or set it to auto) to serve the model in its own dtype")


def quantized(x: Any) -> tuple[Any, Any]:
    """Rows of x in float8_e4m3fn and the float32 scale of each row (absolute maximum / 448)."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """`y = x W^T + b` with W in FP8 (a scale per output channel) and x quantized per row as it arrives."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantized(linear.weight.detach())  # scale: [out, 1]
        # Buffers, not parameters: nothing trains them, and transformers reads a model's dtype from its first
        # floating-point parameter. torch.compile treats module buffers as inputs like parameters, so one
        # compiled decoder layer still serves every layer.
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale.reshape(1, -1).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.out_dtype = linear.weight.dtype

    def forward(self, x: Any) -> Any:
        rows = x.reshape(-1, self.in_features)
        q, scale = quantized(rows)
        # mat2 must be column-major: the [out, in] row-major weight transposed is exactly that.
        y = torch._scaled_mm(q, self.weight.t(), scale_a=scale, scale_b=self.weight_scale, out_dtype=self.out_dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8"


def quantize_linears(model: Any) -> dict[str, int]:
    """Replace the model's linear layers (not the LM head, not LoRA's matrices) by `Fp8Linear` in place; return
    how many were replaced and how many kept their dtype because `_scaled_mm` cannot take their shape."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    chosen = []
    kept = 0
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or module is head or "lora_" in name:
            continue
        if module.in_features % 16 or module.out_features % 16:
            kept += 1
            continue
        chosen.append(name)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Fp8Linear(getattr(parent, child)))
    return {"fp8": len(chosen), "kept": kept}


def apply_setting(model: Any, device: Any) -> str:
    """Apply TUNEBENCH_WEIGHT_DTYPE to a loaded model before the engine sizes its KV cache; return the choice."""
    choice = weight_dtype()
    if choice == "fp8":
        check_device(device)
        on_cuda = getattr(device, "type", "") == "cuda"
        before = torch.cuda.memory_allocated(device) if on_cuda else 0
        counts = quantize_linears(model)
        if on_cuda:
            torch.cuda.empty_cache()  # the bf16 weights' blocks go back before the KV cache measures free memory
        freed = (before - torch.cuda.memory_allocated(device)) / 2**30 if on_cuda else 0.0
        log.info("FP8 weights: %d linear layers quantized (%d kept in the model's dtype), %.1f GiB freed",
                 counts["fp8"], counts["kept"], freed)
    return choice
