"""The fast recipe's kernels on the GPU (train/fastlora.py): GPT-NeoX rotary versions and the fused LoRA linear.

For RedPajama-3B's attention (32 heads of 80) and batch shapes the 3B `fast` case's length-grouped batches have
(16,384 tokens: 8 rows of 2,048 ... 64 rows of 256, plus odd widths), q and k are made as GPT-NeoX makes them
(strided views of the fused qkv output) in bf16. Each version's outputs and q/k gradients are compared with
transformers' function in fp32 on the same inputs (relative error ‖out − ref‖ / ‖ref‖, next to the stock bf16
function's own error), and forward + backward is timed with CUDA events (median of --repeats after warm-up).
The compiled version's graph count over all shapes shows whether new widths recompile. One JSON line per shape
and version, then a summary line; exit code 1 if a version's error exceeds 1.5× the stock bf16 error + 1e-3.

`_LoraLinear` (base matmul + LoRA with dropout 0.1 in one autograd node) is checked the same way on RedPajama-3B's
four target shapes against peft's computation (F.linear + dropout module + two matmuls) under the same seed, so
the CUDA dropout masks must be the same draws: both against fp32 math with the reference's mask.

    python3 benchmarks/train_kernels_check.py --out $OUT
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SHAPES = [(8, 2048), (16, 1024), (32, 512), (57, 288), (64, 256), (11, 1488)]
HEADS, HEAD = 32, 80


def inputs(batch: int, seq: int, dtype: Any, seed: int) -> tuple[Any, ...]:
    import torch

    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(batch, seq, HEADS, 3 * HEAD, device="cuda", generator=gen).to(dtype).requires_grad_()
    inv_freq = 1.0 / (10000 ** (torch.arange(0, HEAD, 2, device="cuda").float() / HEAD))
    angles = torch.arange(seq, device="cuda").float()[None, :, None] * inv_freq
    emb = torch.cat([angles, angles], dim=-1)
    return qkv, emb.cos().to(dtype), emb.sin().to(dtype)


def run(fn: Any, qkv: Any, cos: Any, sin: Any, weights: Any) -> tuple[Any, ...]:
    import torch

    q, k, _ = qkv.transpose(1, 2).chunk(3, dim=-1)
    q_out, k_out = fn(q, k, cos, sin)
    (grad,) = torch.autograd.grad((q_out.float() * weights).sum() + k_out.float().square().sum(), qkv)
    return q_out, k_out, grad


def timed(fn: Any, qkv: Any, cos: Any, sin: Any, weights: Any, repeats: int) -> float:
    import torch

    q, k, _ = qkv.transpose(1, 2).chunk(3, dim=-1)
    times = []
    for i in range(repeats + 3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        q_out, k_out = fn(q, k, cos, sin)
        torch.autograd.backward((q_out, k_out), (weights, weights))
        end.record()
        end.synchronize()
        if i >= 3:
            times.append(start.elapsed_time(end))
    return statistics.median(times)


LORA_SHAPES = [(2560, 7680), (2560, 2560), (2560, 10240), (10240, 2560)]  # qkv, dense, MLP up, MLP down


def lora_linear_check(tokens: int = 8192, p: float = 0.1) -> list[dict[str, Any]]:
    import torch

    from tunebench.train import fastlora

    lines = []
    for n, (fan_in, fan_out) in enumerate(LORA_SHAPES):
        gen = torch.Generator(device="cuda").manual_seed(200 + n)
        x = torch.randn(tokens, fan_in, device="cuda", generator=gen).to(torch.bfloat16)
        w = (torch.randn(fan_out, fan_in, device="cuda", generator=gen) / fan_in ** 0.5).to(torch.bfloat16)
        a = (torch.randn(8, fan_in, device="cuda", generator=gen) / fan_in ** 0.5).requires_grad_()
        b = torch.randn(fan_out, 8, device="cuda", generator=gen).requires_grad_()
        g = torch.randn(tokens, fan_out, device="cuda", generator=gen).to(torch.bfloat16)
        results = {}
        for name in ("peft", "fused"):
            xi = x.clone().requires_grad_()
            torch.manual_seed(7)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if name == "fused":
                    out = fastlora.lora_linear(xi, w, None, a, b, 4.0, p)
                else:
                    x_d = torch.nn.functional.dropout(xi, p, training=True)
                    mask = (x_d != 0).detach()
                    out = torch.nn.functional.linear(xi, w) + (x_d @ a.t() @ b.t()) * 4.0
            grads = torch.autograd.grad(out, (xi, a, b), g)
            results[name] = (out, *grads)
        xe = x.double().requires_grad_()
        ae, be = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        out = xe @ w.double().t() + (xe * mask / (1 - p)) @ ae.t() @ be.t() * 4.0
        exact = (out, *torch.autograd.grad(out, (xe, ae, be), g.double()))
        errors = {name: [float((t.detach().double() - e.detach()).norm() / e.detach().norm())
                         for t, e in zip(res, exact, strict=True)]
                  for name, res in results.items()}
        ok = all(f <= 1.5 * r + 1e-3 for f, r in zip(errors["fused"], errors["peft"], strict=True))
        lines.append({"lora_linear": [fan_in, fan_out], "tokens": tokens, "dropout": p, "pass": ok,
                      "rel_error_out_x_a_b": {k: [f"{e:.2e}" for e in v] for k, v in errors.items()}})
    return lines


def main(argv: list[str] | None = None) -> int:
    import torch
    from torch._dynamo.utils import counters

    from tunebench.train import fastlora

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    stock = fastlora._stock_rope()
    started = time.perf_counter()
    compiled = fastlora.compiled_rope()
    versions = {"transformers": stock, "split": fastlora.split_rotary_pos_emb, "compiled": compiled}
    lines, ok = [], True
    for n, (batch, seq) in enumerate(SHAPES):
        qkv, cos, sin = inputs(batch, seq, torch.bfloat16, n)
        weights = torch.randn(batch, HEADS, seq, HEAD, device="cuda", generator=torch.Generator(device="cuda")
                              .manual_seed(100 + n))
        exact = run(stock, qkv.detach().float().requires_grad_(), cos.float(), sin.float(), weights)
        errors: dict[str, list[float]] = {}
        for name, fn in versions.items():
            t0 = time.perf_counter()
            out = run(fn, qkv, cos, sin, weights)
            first_s = time.perf_counter() - t0
            errors[name] = [float((o.detach().float() - e.detach()).norm() / e.detach().norm())
                            for o, e in zip(out, exact, strict=True)]
            ms = timed(fn, qkv, cos, sin, weights.to(torch.bfloat16), args.repeats)
            lines.append({"shape": [batch, seq, HEADS, HEAD], "version": name, "fwd_bwd_ms": round(ms, 4),
                          "first_call_s": round(first_s, 2), "rel_error_q_k_grad": [f"{e:.2e}" for e in errors[name]]})
        for name in ("split", "compiled"):
            bad = [o > 1.5 * s + 1e-3 for o, s in zip(errors[name], errors["transformers"], strict=True)]
            lines[-3 + list(versions).index(name)]["pass"] = not any(bad)
            ok = ok and not any(bad)
        for line in lines[-3:]:  # as they come: a later failure keeps what was measured
            print(json.dumps(line), flush=True)
    try:
        lora = lora_linear_check()
    except Exception as err:  # reported in its line and the summary, with the rotary numbers kept
        lora = [{"lora_linear": "error", "pass": False, "error": f"{type(err).__name__}: {err}"}]
    for line in lora:
        print(json.dumps(line), flush=True)
    lines += lora
    ok = ok and all(line["pass"] for line in lora)
    per_version = {name: round(sum(line["fwd_bwd_ms"] for line in lines if line.get("version") == name), 3)
                   for name in versions}
    lines.append({"summary": "rope_check", "sum_fwd_bwd_ms_over_shapes": per_version,
                  "compiled_graphs": counters["stats"]["unique_graphs"], "compile_failed": [str(e) for e in
                                                                                            compiled.failed],
                  "pass": ok, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "wall_s": round(time.perf_counter() - started, 1)})
    print(json.dumps(lines[-1]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rope_check.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return 0 if ok and not compiled.failed else 1


if __name__ == "__main__":
    sys.exit(main())
