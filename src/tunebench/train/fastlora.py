"""Training-speed kernels around peft's LoRA and SDPA, switched on by the plan (the `fast` recipe on CUDA).

`install_fused_lora`: peft's `lora.Linear` computes `result + lora_B(lora_A(dropout(x))) * scaling` as seven
kernels and four autograd nodes per target module (two weight casts under autocast, two matmuls, a multiply and
an add over the full output, and their backward twins). Here the adapter path after the dropout is one autograd
function: h = x_d A^T (the rank-r product), then out = addmm(result, h, B^T, alpha=scaling), so the scaling and
the residual add ride in the second matmul's epilogue, and the backward scales the r-wide matrices instead of
the full output gradient. The dropout is peft's own module on the same input, so its random mask is drawn
as peft draws it (on CPU in fp32: the same loss and adapter gradients as peft to 1e-6, tested). Adapter
weights stay fp32 (the optimizer's masters); only their matmul copies are in the activations' dtype, which
is what autocast did anyway. An fp32 input under autocast (a LayerNorm's output) is rounded to the base
layer's dtype once, for the base matmul and the adapter alike. Anything this path does not cover (DoRA and
other variants, adapter biases, merged or disabled adapters, mixed-adapter batches, quantized bases) falls
back to peft's forward, module by module. With `with_base` (`Plan.fused_lora_linear`) a layer with one active
adapter and a frozen, hook-free base is one node altogether (`_LoraLinear`): the base matmul, the dropout
(drawn inside as torch's own dropout draws it, so the masks stay peft's) and the adapter, and its backward
adds the base input gradient in the GEMM epilogue instead of autograd summing two full-size gradients of x.

`install_norms_in_compute_dtype` and `install_rope`: see their docstrings (found in the same profile:
LayerNorm outputs in fp32 under autocast, and the rotary embedding's concatenations at ~50 ms per step).

`sdpa_kernels`: cuDNN's SDPA, which PyTorch prefers on Hopper, builds and caches an execution graph per input
shape; length-grouped batches bring a new width nearly every step, and the profile of the 3B `fast` case showed
~7 ms of CPU per attention call. The flash kernel has no such per-shape cost (`Plan.flash_sdpa`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch


class _LoraDelta(torch.autograd.Function):
    """result + scaling * (x_d A^T) B^T for x_d [..., in], A [r, in], B [out, r]; one node forward and back."""

    @staticmethod
    def forward(ctx: Any, result: torch.Tensor, x_d: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                scaling: float) -> torch.Tensor:
        dtype = x_d.dtype
        a_c, b_c = a.to(dtype), b.to(dtype)
        flat = x_d.reshape(-1, x_d.shape[-1])
        h = flat @ a_c.t()
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h, b_c.t(), alpha=scaling)
        ctx.save_for_backward(flat, h, a_c, b_c)
        ctx.scaling = scaling
        ctx.x_shape = x_d.shape
        ctx.weight_dtypes = (a.dtype, b.dtype)
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        flat, h, a_c, b_c = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_h = g @ (b_c * ctx.scaling)                    # [T, r]: scale the small matrix, not the output
        grad_a = (grad_h.t() @ flat).to(ctx.weight_dtypes[0]) if ctx.needs_input_grad[2] else None
        grad_b = ((g.t() @ h) * ctx.scaling).to(ctx.weight_dtypes[1]) if ctx.needs_input_grad[3] else None
        grad_x = (grad_h @ a_c).view(ctx.x_shape) if ctx.needs_input_grad[1] else None
        return grad, grad_x, grad_a, grad_b, None


def lora_delta(result: torch.Tensor, x_d: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               scaling: float) -> torch.Tensor:
    return _LoraDelta.apply(result, x_d, a, b, scaling)


class _LoraLinear(torch.autograd.Function):
    """base(x) + scaling * (dropout(x) A^T) B^T for a frozen nn.Linear base, as one node forward and back. The
    backward adds the base layer's input gradient in the GEMM's epilogue (addmm onto the adapter's, already
    through the dropout mask) instead of autograd summing the two full-size gradients of x in a separate
    kernel. The dropout is drawn as torch.nn.functional.dropout draws it on the same device (the fused
    `native_dropout` kernel on CUDA, a Bernoulli noise tensor on CPU), so the masks are peft's."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scaling: float, p: float) -> torch.Tensor:
        dtype = x.dtype
        a_c, b_c = a.to(dtype), b.to(dtype)
        x_d, mask = _dropout(x, p) if p > 0 else (x, None)
        flat = x_d.reshape(-1, x.shape[-1])
        result = torch.nn.functional.linear(x.reshape(-1, x.shape[-1]), weight, bias)
        h = flat @ a_c.t()
        out = torch.addmm(result, h, b_c.t(), alpha=scaling)
        ctx.save_for_backward(flat, h, a_c, b_c, weight, mask)
        ctx.scaling, ctx.p, ctx.x_shape = scaling, p, x.shape
        ctx.weight_dtypes = (a.dtype, b.dtype)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        flat, h, a_c, b_c, weight, mask = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        grad_h = g @ (b_c * ctx.scaling)
        grad_a = (grad_h.t() @ flat).to(ctx.weight_dtypes[0]) if ctx.needs_input_grad[3] else None
        grad_b = ((g.t() @ h) * ctx.scaling).to(ctx.weight_dtypes[1]) if ctx.needs_input_grad[4] else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            lora = grad_h @ a_c
            if mask is not None:
                lora = _dropout_backward(lora, mask.reshape(lora.shape), ctx.p)
            grad_x = torch.addmm(lora, g, weight.to(g.dtype)).view(ctx.x_shape)
        return grad_x, None, None, grad_a, grad_b, None, None


def _fused_dropout(x: torch.Tensor) -> bool:
    """Whether torch.nn.functional.dropout takes ATen's fused `native_dropout` kernel for `x` (its rule for
    0 < p < 1 on non-empty tensors: CUDA and other accelerators; on CPU it multiplies by a noise tensor)."""
    return x.device.type not in ("cpu", "mps", "meta")


def _dropout(x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(dropped x, what the backward needs): the same random draws as torch.nn.functional.dropout(x, p)."""
    if _fused_dropout(x):
        return torch.native_dropout(x, p, True)  # (output, bool mask)
    noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)  # ATen's CPU dropout
    return x * noise, noise


def _dropout_backward(grad: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.ops.aten.native_dropout_backward(grad, mask, 1 / (1 - p))
    return grad.mul_(mask)


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor,
                scaling: float, p: float) -> torch.Tensor:
    return _LoraLinear.apply(x, weight, bias, a, b, scaling, p)


def _with_base(layer: Any, kwargs: dict[str, Any]) -> tuple[str, float] | None:
    """(adapter, dropout p) when the whole layer can be `_LoraLinear`: one active adapter, a frozen base without
    hooks or extra arguments, and a plain dropout (or none). Else None: the base runs on its own."""
    if not getattr(layer, "_tunebench_with_base", False) or kwargs:
        return None
    names = [name for name in layer.active_adapters if name in layer.lora_A]
    base = layer.base_layer
    if len(names) != 1 or base._forward_hooks or base._forward_pre_hooks or hasattr(base, "_hf_hook") \
            or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    dropout = layer.lora_dropout[names[0]]
    if isinstance(dropout, torch.nn.Identity):
        return names[0], 0.0
    if type(dropout) is torch.nn.Dropout and not dropout.inplace and dropout.p < 1:
        return names[0], dropout.p if dropout.training else 0.0
    return None


def _covered(layer: Any, x: torch.Tensor, kwargs: dict[str, Any]) -> bool:
    """Plain LoRA on an nn.Linear base, unmerged, no variant or bias: the only case the fused path computes."""
    if layer.disable_adapters or layer.merged or kwargs.get("adapter_names") is not None:
        return False
    if not isinstance(layer.base_layer, torch.nn.Linear):
        return False
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}) or layer.lora_A[name].bias is not None \
                or layer.lora_B[name].bias is not None:
            return False
    return x.is_floating_point()


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if not _covered(self, x, kwargs):
        return type(self).forward(self, x, *args, **kwargs)
    self._check_forward_args(x, *args, **kwargs)
    compute = self.base_layer.weight.dtype
    if x.dtype != compute:
        if not torch.is_autocast_enabled(x.device.type):
            return type(self).forward(self, x, *args, **kwargs)
        # Under autocast a LayerNorm hands its fp32 output to the next linear (qkv, MLP up), which autocast
        # rounds to the compute dtype anyway: round it once here, for the base matmul and the adapter alike.
        x = x.to(compute)
    whole = None if args else _with_base(self, kwargs)
    if whole is not None:
        name, p = whole
        return lora_linear(x, self.base_layer.weight, self.base_layer.bias, self.lora_A[name].weight,
                           self.lora_B[name].weight, self.scaling[name], p)
    result = self.base_layer(x, *args, **kwargs)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        result = lora_delta(result, self.lora_dropout[name](x), self.lora_A[name].weight, self.lora_B[name].weight,
                            self.scaling[name])
    return result


def install_fused_lora(model: Any, with_base: bool = False) -> int:
    """Route every peft `lora.Linear` of `model` through the fused adapter path (`with_base`: the base layer's
    matmul inside the same autograd node, `_LoraLinear`); returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = 0
    for module in model.modules():
        if type(module) is LoraLinear:  # subclasses (bitsandbytes, other backends) keep their own forward
            module.forward = MethodType(_fused_forward, module)
            module._tunebench_with_base = with_base
            patched += 1
    return patched


def _norm_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != self.weight.dtype or not torch.is_autocast_enabled(x.device.type):
        return type(self).forward(self, x)
    with torch.autocast(x.device.type, enabled=False):  # statistics in fp32 inside the kernel, output in x's dtype
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def install_norms_in_compute_dtype(model: Any) -> int:
    """LayerNorms of a bf16 model return bf16 under autocast instead of fp32. Autocast runs layer_norm in fp32
    and every consumer (the next linear, LoRA's dropout) rounds the output back to bf16, so the fp32 tensor costs
    a wider write, a cast copy per consumer and fp32 gradients on the way back, for the same rounded values
    (the kernel accumulates in fp32 either way). Returns how many norms were switched."""
    patched = 0
    for module in model.modules():
        if type(module) is torch.nn.LayerNorm and module.weight is not None \
                and module.weight.dtype in (torch.bfloat16, torch.float16):
            module.forward = MethodType(_norm_forward, module)
            patched += 1
    return patched


ROPES = ("transformers", "liger", "compiled", "split")


class _RotateHalf(torch.autograd.Function):
    """x * cos + rotate_half(x) * sin for a full-width rotary (rotary dim = head dim): three kernels each way
    (a multiply and two half-width fused multiply-adds) instead of transformers' neg, two concatenations, two
    multiplies and an add forward and their twins back. cos and sin are not differentiated (they come from
    the rotary buffer)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        out = x * cos
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)  # y1 = x1 c1 - x2 s1
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])            # y2 = x2 c2 + x1 s2
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        grad_x = grad * cos
        grad_x[..., :half].addcmul_(grad[..., half:], sin[..., half:])            # dx1 = g1 c1 + g2 s2
        grad_x[..., half:].addcmul_(grad[..., :half], sin[..., :half], value=-1)  # dx2 = g2 c2 - g1 s1
        return grad_x, None, None


def split_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' GPT-NeoX `apply_rotary_pos_emb` with `_RotateHalf` where the rotary covers the whole head."""
    if cos.shape[-1] != q.shape[-1] or q.shape[-1] % 2:  # a partial rotary keeps transformers' code
        return _stock_rope()(q, k, cos, sin, unsqueeze_dim)
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return _RotateHalf.apply(q, cos, sin), _RotateHalf.apply(k, cos, sin)


_STOCK_ROPE: list[Any] = []


def _stock_rope() -> Any:
    """transformers' own GPT-NeoX rotary function, as it was before any install_rope in this process."""
    if not _STOCK_ROPE:
        from transformers.models.gpt_neox import modeling_gpt_neox

        _STOCK_ROPE.append(modeling_gpt_neox.apply_rotary_pos_emb)
    return _STOCK_ROPE[0]


def compiled_rope(backend: str = "inductor", trial: tuple[torch.device, torch.dtype] | None = None) -> Any:
    """transformers' rotary function through torch.compile with dynamic shapes: one generated kernel for q and
    k each way instead of ten, and no recompilation when length-grouped batches change width and row count
    (only batch size 1 and evaluation without gradients get graphs of their own). If compilation fails, the
    stock function runs from then on (with a warning); `trial` (device, dtype) runs it forward and backward once
    right away, so that a failure shows before training."""
    from torch.fx.experimental import _config as shape_config

    # Without duck sizing a batch whose row count happens to equal the head count (32 rows of 512 tokens) does
    # not tie the two sizes together, which would recompile at the next batch. Read when a graph is traced.
    shape_config.use_duck_shape = False
    stock = _stock_rope()
    compiled = torch.compile(stock, dynamic=True, fullgraph=True, backend=backend)
    failed: list[Exception] = []

    def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if not failed:
            try:
                return compiled(q, k, cos, sin, unsqueeze_dim)
            except torch.OutOfMemoryError:
                raise
            except Exception as err:  # no Triton, no C++ compiler, an unsupported op: fall back, say so once
                import warnings

                failed.append(err)
                warnings.warn(f"compiled rotary embedding failed ({type(err).__name__}: {err}); "
                              "using transformers' own", stacklevel=2)
        return stock(q, k, cos, sin, unsqueeze_dim)

    apply_rotary_pos_emb.failed = failed  # type: ignore[attr-defined]
    if trial is not None:
        _trial_run(apply_rotary_pos_emb, *trial)
    return apply_rotary_pos_emb


def _trial_run(rope: Any, device: torch.device, dtype: torch.dtype) -> None:
    """Forward and backward once on small q/k views like GPT-NeoX's, so that a failure to compile either graph
    (the backward one is compiled at the first backward) shows here, where `rope` can still fall back, and not
    in the middle of a training step."""
    qkv = torch.randn(2, 5, 3, 3 * 8, device=device, dtype=dtype, requires_grad=True)
    q, k, _ = qkv.transpose(1, 2).chunk(3, dim=-1)
    # cos and sin as the rotary module makes them: two separate tensors (views of one, or one passed twice,
    # would be traced into a graph of their own and the first training step would compile again)
    cos, sin = (torch.randn(1, 5, 8, device=device, dtype=dtype) for _ in range(2))
    autocast = dtype in (torch.bfloat16, torch.float16)  # as the Trainer calls it: the same graph then
    try:
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            q_out, k_out = rope(q, k, cos, sin)
        (q_out.float().sum() + k_out.float().sum()).backward()
    except torch.OutOfMemoryError:
        raise
    except Exception as err:
        import warnings

        if not rope.failed:
            rope.failed.append(err)
            warnings.warn(f"compiled rotary embedding failed its trial ({type(err).__name__}: {err}); "
                          "using transformers' own", stacklevel=3)


def install_rope(model: Any, how: str, backend: str = "inductor") -> bool:
    """GPT-NeoX's rotary embedding (two rotate-half concatenations, four multiplies, two adds and two more
    concatenations per layer, forward and back; ~45 ms of each 560 ms step of the 3B `fast` case on the H200,
    most of it strided elementwise kernels over the q and k views of the fused qkv output) replaced by
    `how`: "liger" (liger-kernel's Triton kernel; measured slower), "compiled" (`compiled_rope`), "split"
    (`split_rotary_pos_emb`), or "transformers" (restores the stock function). transformers looks the function
    up in its module at every call, so this holds for the process. Returns whether a replacement is in place."""
    if how not in ROPES:
        raise ValueError(f"rope {how!r}: choose from {ROPES}")
    if getattr(model.config, "model_type", None) != "gpt_neox":
        return False
    from transformers.models.gpt_neox import modeling_gpt_neox

    stock = _stock_rope()
    if how == "transformers":
        modeling_gpt_neox.apply_rotary_pos_emb = stock
        return False
    if how == "liger":
        if not torch.cuda.is_available():
            return False
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        def liger_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
            return liger_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)

        modeling_gpt_neox.apply_rotary_pos_emb = liger_rope
    elif how == "compiled":
        weight = next(model.parameters(), None) if hasattr(model, "parameters") else None
        trial = (weight.device, weight.dtype) if weight is not None else None
        modeling_gpt_neox.apply_rotary_pos_emb = compiled_rope(backend, trial)
    else:
        modeling_gpt_neox.apply_rotary_pos_emb = split_rotary_pos_emb
    return True


def install_fused_rope(model: Any) -> bool:
    """liger-kernel's rope (CUDA only; same math); kept for the earlier measurement's name."""
    return install_rope(model, "liger")


@contextmanager
def sdpa_kernels(flash: bool) -> Iterator[None]:
    """With `flash`, SDPA may not pick cuDNN while training (flash, memory-efficient and math stay allowed);
    the process-wide flag is restored afterwards."""
    if not flash or not torch.cuda.is_available():
        yield
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
