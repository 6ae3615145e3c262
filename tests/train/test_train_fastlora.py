"""The fused LoRA path (train/fastlora.py) computes what peft's lora.Linear computes, dropout mask included."""

from __future__ import annotations

import pytest
import torch

from tunebench.train.fastlora import install_fused_lora, lora_delta, sdpa_kernels
from tunebench.train.modeling import keep_lora_inputs_in_compute_dtype

TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def lora_model(model_dir, dropout: float, dtype=torch.float32):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    base.config.use_cache = False
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS))
    for name, p in model.named_parameters():  # B starts at zero in peft: give it values so its gradient path counts
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model.train()


def loss_and_grads(model, ids, seed: int):
    torch.manual_seed(seed)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_matches_peft_loss_and_adapter_gradients(tiny_neox_dir, dropout):
    ids = torch.randint(3, 200, (3, 24), generator=torch.Generator().manual_seed(0))
    plain, fused = lora_model(tiny_neox_dir, dropout), lora_model(tiny_neox_dir, dropout)
    assert install_fused_lora(fused) == 2 * len(TARGETS)
    loss_p, grads_p = loss_and_grads(plain, ids, seed=7)
    loss_f, grads_f = loss_and_grads(fused, ids, seed=7)  # same seed: peft's dropout draws the same masks
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-6, atol=1e-6)
    assert grads_f.keys() == grads_p.keys() and len(grads_p) == 4 * len(TARGETS)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-5, atol=1e-6, msg=name)


def test_fused_lora_in_bf16_is_as_close_to_fp32_as_peft_under_autocast(tiny_neox_dir):
    """The GPU setting, on the CPU: bf16 base and activations, fp32 adapter weights, bf16 autocast. Both paths
    round differently, so each is compared with the same model in fp32; the reference path is the engine's
    before the fused one (peft without its fp32 input casts)."""
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    plain, fused = lora_model(tiny_neox_dir, 0.0, torch.bfloat16), lora_model(tiny_neox_dir, 0.0, torch.bfloat16)
    exact = lora_model(tiny_neox_dir, 0.0, torch.bfloat16).float()
    keep_lora_inputs_in_compute_dtype(plain)
    install_fused_lora(fused)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_p, grads_p = loss_and_grads(plain, ids, seed=3)
        loss_f, grads_f = loss_and_grads(fused, ids, seed=3)
    loss_x, grads_x = loss_and_grads(exact, ids, seed=3)
    assert all(g.dtype == torch.float32 for g in grads_f.values())  # fp32 masters keep fp32 gradients

    def error(grads):
        return float(sum((grads[n] - grads_x[n]).norm() ** 2 for n in grads_x) ** 0.5
                     / sum(g.norm() ** 2 for g in grads_x.values()) ** 0.5)

    assert abs(float(loss_f) - float(loss_x)) <= 2 * abs(float(loss_p) - float(loss_x)) + 2e-3
    assert error(grads_f) <= 1.5 * error(grads_p) + 1e-3, (error(grads_f), error(grads_p))


def test_lora_delta_gradients_by_finite_differences():
    gen = torch.Generator().manual_seed(2)
    args = [torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)
            for shape in ((2, 3, 5), (2, 3, 4), (2, 4), (5, 2))]
    assert torch.autograd.gradcheck(lambda r, x, a, b: lora_delta(r, x, a, b, 0.7), args)


def test_disabled_or_merged_adapters_fall_back_to_peft(tiny_neox_dir):
    ids = torch.randint(3, 200, (1, 12), generator=torch.Generator().manual_seed(3))
    plain, fused = lora_model(tiny_neox_dir, 0.0).eval(), lora_model(tiny_neox_dir, 0.0).eval()
    install_fused_lora(fused)
    with torch.no_grad():
        with plain.disable_adapter(), fused.disable_adapter():
            torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
        plain.merge_adapter()
        fused.merge_adapter()
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_sdpa_kernels_is_a_no_op_without_cuda():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with sdpa_kernels(True):
        if not torch.cuda.is_available():
            assert torch.backends.cuda.cudnn_sdp_enabled() == before
        else:
            assert not torch.backends.cuda.cudnn_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
