"""The fused LoRA path (train/fastlora.py) computes what peft's lora.Linear computes, dropout mask included."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from tunebench.train import fastlora
from tunebench.train.fastlora import install_fused_lora, install_norms_in_compute_dtype, lora_delta, sdpa_kernels
from tunebench.train.modeling import keep_lora_inputs_in_compute_dtype
from tunebench.train.recipes import Device, speed_knobs

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


@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_matches_peft_loss_and_adapter_gradients(tiny_neox_dir, dropout, with_base, monkeypatch):
    ids = torch.randint(3, 200, (3, 24), generator=torch.Generator().manual_seed(0))
    plain, fused = lora_model(tiny_neox_dir, dropout), lora_model(tiny_neox_dir, dropout)
    assert install_fused_lora(fused, with_base=with_base) == 2 * len(TARGETS)
    whole = []
    monkeypatch.setattr(fastlora, "lora_linear", lambda *a: whole.append(a[-1]) or _linear(*a))
    loss_p, grads_p = loss_and_grads(plain, ids, seed=7)
    loss_f, grads_f = loss_and_grads(fused, ids, seed=7)  # same seed: peft's dropout draws the same masks
    torch.testing.assert_close(loss_f, loss_p, rtol=1e-6, atol=1e-6)
    assert grads_f.keys() == grads_p.keys() and len(grads_p) == 4 * len(TARGETS)
    for name in grads_p:
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-5, atol=1e-6, msg=name)
    assert whole == ([dropout] * 2 * len(TARGETS) if with_base else [])  # the base matmul inside, dropout drawn there


@pytest.mark.parametrize(("norms", "with_base"), [(False, False), (True, False), (True, True)])
def test_fused_lora_in_bf16_is_as_close_to_fp32_as_peft_under_autocast(tiny_neox_dir, norms, with_base,
                                                                       monkeypatch):
    """The GPU setting, on the CPU: bf16 base and activations, fp32 adapter weights, bf16 autocast. Both paths
    round differently, so each is compared with the same model in fp32; the reference path is the engine's
    before the fused one (peft without its fp32 input casts)."""
    ids = torch.randint(3, 200, (2, 16), generator=torch.Generator().manual_seed(1))
    plain, fused = lora_model(tiny_neox_dir, 0.0, torch.bfloat16), lora_model(tiny_neox_dir, 0.0, torch.bfloat16)
    exact = lora_model(tiny_neox_dir, 0.0, torch.bfloat16).float()
    keep_lora_inputs_in_compute_dtype(plain)
    install_fused_lora(fused, with_base=with_base)
    if norms:  # the LayerNorms' bf16 outputs too (5 per 2-layer NeoX: two per layer and the final one)
        assert install_norms_in_compute_dtype(fused) == 5
    fused_calls = []
    monkeypatch.setattr(fastlora, "lora_delta", lambda *a: fused_calls.append(1) or _delta(*a))
    monkeypatch.setattr(fastlora, "lora_linear", lambda *a: fused_calls.append(1) or _linear(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_p, grads_p = loss_and_grads(plain, ids, seed=3)
        loss_f, grads_f = loss_and_grads(fused, ids, seed=3)
    assert len(fused_calls) == 2 * len(TARGETS)  # LayerNorm-fed targets too (their fp32 input is rounded once)
    loss_x, grads_x = loss_and_grads(exact, ids, seed=3)
    assert all(g.dtype == torch.float32 for g in grads_f.values())  # fp32 masters keep fp32 gradients

    def error(grads):
        return float(sum((grads[n] - grads_x[n]).norm() ** 2 for n in grads_x) ** 0.5
                     / sum(g.norm() ** 2 for g in grads_x.values()) ** 0.5)

    assert abs(float(loss_f) - float(loss_x)) <= 2 * abs(float(loss_p) - float(loss_x)) + 2e-3
    assert error(grads_f) <= 1.5 * error(grads_p) + 1e-3, (error(grads_f), error(grads_p))


_delta = lora_delta
_linear = fastlora.lora_linear


def test_lora_linear_gradients_by_finite_differences():
    gen = torch.Generator().manual_seed(5)
    x, w, bias, a, b = (torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in
                        ((2, 3, 5), (4, 5), (4,), (2, 5), (4, 2)))
    for t in (x, a, b):
        t.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a, b: fastlora.lora_linear(x, w, bias, a, b, 0.7, 0.0), (x, a, b))
    # with dropout: the same masks as peft's way (dropout module, base linear, adapter) under the same seed
    drop = torch.nn.Dropout(0.3)
    outs = []
    for fused in (True, False):
        torch.manual_seed(11)
        out = (fastlora.lora_linear(x, w, bias, a, b, 0.7, 0.3) if fused
               else torch.nn.functional.linear(x, w, bias) + drop(x) @ a.t() @ b.t() * 0.7)
        outs.append((out, *torch.autograd.grad(out.square().sum(), (x, a, b))))
    for ours, theirs in zip(*outs, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_lora_linear_with_the_fused_dropout_kernel_is_native_dropout(monkeypatch):
    """The CUDA branch (ATen's native_dropout and its backward), run on the CPU where torch has the same ops."""
    gen = torch.Generator().manual_seed(6)
    x, w, a, b = (torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True) for shape in
                  ((3, 4, 6), (5, 6), (2, 6), (5, 2)))
    monkeypatch.setattr(fastlora, "_fused_dropout", lambda t: True)
    outs = []
    for fused in (True, False):
        torch.manual_seed(12)
        if fused:
            out = fastlora.lora_linear(x, w.detach(), None, a, b, 0.5, 0.25)
        else:
            x_d, _ = torch.native_dropout(x, 0.25, True)
            out = torch.nn.functional.linear(x, w.detach()) + x_d @ a.t() @ b.t() * 0.5
        outs.append((out, *torch.autograd.grad(out.square().sum(), (x, a, b))))
    for ours, theirs in zip(*outs, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_lora_linear_is_left_to_peft_where_it_does_not_apply(tiny_neox_dir):
    model = lora_model(tiny_neox_dir, 0.1)
    install_fused_lora(model, with_base=True)
    layer = model.base_model.model.gpt_neox.layers[0].attention.query_key_value
    assert fastlora._with_base(layer, {}) == ("default", 0.1)
    assert fastlora._with_base(layer, {"adapter_names": ["default"]}) is None
    layer.lora_dropout["default"].eval()
    assert fastlora._with_base(layer, {}) == ("default", 0.0)
    handle = layer.base_layer.register_forward_hook(lambda *a: None)
    assert fastlora._with_base(layer, {}) is None  # a hook on the base layer must still see its call
    handle.remove()
    layer.base_layer.weight.requires_grad_(True)
    assert fastlora._with_base(layer, {}) is None  # a trained base needs its weight gradient: peft's path
    layer.base_layer.weight.requires_grad_(False)
    layer._tunebench_with_base = False
    assert fastlora._with_base(layer, {}) is None


def test_norms_in_compute_dtype_give_the_fp32_norm_rounded_to_bf16():
    norm = torch.nn.LayerNorm(64).to(torch.bfloat16)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(5, 64).to(torch.bfloat16)
    exact = torch.nn.functional.layer_norm(x.float(), (64,), norm.weight.float(), norm.bias.float())
    install_norms_in_compute_dtype(norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), exact, rtol=8e-3, atol=8e-3)  # bf16 rounding of the same values


def test_fused_lora_rounds_an_fp32_input_once_under_autocast(tiny_neox_dir, monkeypatch):
    """What a LayerNorm hands the qkv and MLP-up targets under CUDA autocast: fp32 into a bf16 base layer."""
    plain, fused = lora_model(tiny_neox_dir, 0.0, torch.bfloat16), lora_model(tiny_neox_dir, 0.0, torch.bfloat16)
    keep_lora_inputs_in_compute_dtype(plain)
    install_fused_lora(fused)
    layer_p = plain.base_model.model.gpt_neox.layers[0].attention.query_key_value
    layer_f = fused.base_model.model.gpt_neox.layers[0].attention.query_key_value
    x = torch.randn(2, 7, layer_p.in_features, generator=torch.Generator().manual_seed(4))
    calls = []
    monkeypatch.setattr(fastlora, "lora_delta", lambda *a: calls.append(a[1].dtype) or _delta(*a))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_p = layer_p(x)
        out_f = layer_f(x)
    assert out_f.dtype == out_p.dtype == torch.bfloat16 and calls == [torch.bfloat16]  # the fused path ran
    torch.testing.assert_close(out_f.float(), out_p.float(), rtol=2e-2, atol=2e-2)
    with pytest.raises(RuntimeError):  # outside autocast the mismatch stays peft's (and torch's) error
        layer_f(x)


def test_speed_knobs_only_for_bf16_lora_of_causal_models_on_cuda():
    gpu = Device(cuda=True, bf16=True, liger=True)
    knobs = speed_knobs(False, "causal", "lora", gpu)
    assert knobs.pop("fused_rope") is False  # measured slower: an override only
    assert knobs.pop("rope") == "compiled"
    assert all(knobs.values())
    for off in (speed_knobs(True, "causal", "lora", gpu), speed_knobs(False, "causal", "qlora", gpu),
                speed_knobs(False, "seq2seq", "lora", gpu), speed_knobs(False, "causal", "lora", Device(cuda=False))):
        assert off.pop("rope") == "transformers"
        assert not any(v for k, v in off.items() if k != "sync_free_steps")
    # no syncs between logs changes no number: every fast run on CUDA, QLoRA and seq2seq too; never on CPU
    assert speed_knobs(False, "causal", "qlora", gpu)["sync_free_steps"]
    assert not speed_knobs(True, "causal", "lora", gpu)["sync_free_steps"]
    assert not speed_knobs(False, "causal", "lora", Device(cuda=False))["sync_free_steps"]


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


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
                    reason="liger-kernel's rope is a Triton kernel (CUDA)")
def test_fused_rope_matches_gpt_neox_rotary_embedding_on_cuda():
    from transformers.models.gpt_neox import modeling_gpt_neox

    original = modeling_gpt_neox.apply_rotary_pos_emb
    gen = torch.Generator(device="cuda").manual_seed(5)
    qkv = torch.randn(2, 64, 4, 3 * 80, device="cuda", generator=gen).to(torch.bfloat16)
    q, k = (t.transpose(1, 2).requires_grad_() for t in (qkv[..., :80].clone(), qkv[..., 80:160].clone()))
    angles = torch.arange(64, device="cuda")[None, :, None] * torch.rand(1, 1, 40, device="cuda", generator=gen)
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(torch.bfloat16), emb.sin().to(torch.bfloat16)
    config = type("Config", (), {"model_type": "gpt_neox"})()
    try:
        assert fastlora.install_fused_rope(type("Model", (), {"config": config})())
        outs = []
        for fn, args in ((original, (q.float(), k.float(), cos.float(), sin.float())), (original, (q, k, cos, sin)),
                         (modeling_gpt_neox.apply_rotary_pos_emb, (q, k, cos, sin))):
            q_out, k_out = fn(*args)
            grads = torch.autograd.grad((q_out.float().square().sum() + k_out.float().sum()), (q, k))
            outs.append((q_out, k_out, *grads))
        # bf16 outputs round differently (liger rounds once, the reference after every op; the H200 run of the
        # plain assert_close saw 7 of 40,960 elements one bf16 step apart): each is compared with fp32 math.
        for exact, plain, fused in zip(*outs, strict=True):
            error = [float((t.float() - exact.float()).norm() / exact.float().norm()) for t in (plain, fused)]
            assert error[1] <= 1.5 * error[0] + 1e-3, error
    finally:
        modeling_gpt_neox.apply_rotary_pos_emb = original


# ---------------------------------------------------------------- rotary embedding (install_rope)


def neox_rope_inputs(batch: int, seq: int, heads: int = 3, head: int = 8, dtype=torch.float64, seed: int = 0):
    """q and k as GPT-NeoX makes them (strided views of the fused qkv output) and cos/sin as its rotary makes them."""
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, seq, heads, 3 * head, generator=gen, dtype=dtype, requires_grad=True)
    q, k, _ = qkv.transpose(1, 2).chunk(3, dim=-1)
    angles = torch.arange(seq, dtype=dtype)[None, :, None] * torch.rand(1, 1, head // 2, generator=gen, dtype=dtype)
    emb = torch.cat([angles, angles], dim=-1)
    return qkv, q, k, emb.cos(), emb.sin()


def rope_out_and_grad(fn, batch: int, seq: int, dtype=torch.float64, seed: int = 0):
    qkv, q, k, cos, sin = neox_rope_inputs(batch, seq, dtype=dtype, seed=seed)
    q_out, k_out = fn(q, k, cos, sin)
    weights = torch.randn(q_out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    (grad,) = torch.autograd.grad((q_out * weights).sum() + k_out.square().sum(), qkv)
    return q_out.detach(), k_out.detach(), grad


@pytest.fixture
def stock_rope():
    from transformers.models.gpt_neox import modeling_gpt_neox

    stock = fastlora._stock_rope()
    yield stock
    modeling_gpt_neox.apply_rotary_pos_emb = stock  # install_rope holds for the process: restore it


def test_split_rope_is_transformers_rotary_forward_and_back(stock_rope):
    for batch, seq in ((2, 5), (1, 7)):
        for ours, theirs in zip(rope_out_and_grad(fastlora.split_rotary_pos_emb, batch, seq),
                                rope_out_and_grad(stock_rope, batch, seq), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    _, q, _, cos, sin = neox_rope_inputs(2, 4)
    x = q.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fastlora._RotateHalf.apply(t, cos[:, None], sin[:, None]), (x,))
    # a partial rotary (rotary dim < head dim) keeps transformers' function
    half_cos, half_sin = cos[..., :4], sin[..., :4]
    for ours, theirs in zip(fastlora.split_rotary_pos_emb(q, q, half_cos, half_sin),
                            stock_rope(q, q, half_cos, half_sin), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_compiled_rope_is_transformers_rotary_and_compiles_once_for_all_widths(stock_rope):
    """`aot_eager` traces and differentiates the same graph inductor compiles (fast enough for a unit test);
    the kernels themselves are checked on the GPU by benchmarks/train_kernels_check.py."""
    torch._dynamo.reset()
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # the install-time trial (forward and backward on small tensors) compiles the graph every width then reuses
    compiled = fastlora.compiled_rope(backend="aot_eager", trial=(torch.device("cpu"), torch.float32))
    for batch, seq in ((3, 16), (4, 24), (2, 40), (6, 8)):  # length-grouped batches: new widths and row counts
        for ours, theirs in zip(rope_out_and_grad(compiled, batch, seq, torch.float32),
                                rope_out_and_grad(stock_rope, batch, seq, torch.float32), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames == 1  # one dynamic graph for all
    assert compiled.failed == []


def test_compiled_rope_falls_back_to_transformers_once_compilation_fails(stock_rope):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    compiled = fastlora.compiled_rope(backend=broken_backend)
    with pytest.warns(UserWarning, match="compiled rotary embedding failed"):
        out = rope_out_and_grad(compiled, 2, 6)
    assert len(compiled.failed) == 1
    for ours, theirs in zip(out, rope_out_and_grad(stock_rope, 2, 6), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_compiled_rope_trial_runs_both_graphs_at_install_and_catches_a_failure(stock_rope):
    def no_backward(graph, example_inputs):  # forward compiles; the backward graph does not
        from torch._dynamo.backends.common import aot_autograd

        def fail(*args):
            raise RuntimeError("backward compiler missing")

        return aot_autograd(fw_compiler=lambda g, _: g, bw_compiler=fail)(graph, example_inputs)

    torch._dynamo.reset()
    with pytest.warns(UserWarning, match="failed its trial"):
        bad = fastlora.compiled_rope(backend=no_backward, trial=(torch.device("cpu"), torch.float32))
    assert len(bad.failed) == 1
    for ours, theirs in zip(rope_out_and_grad(bad, 2, 6), rope_out_and_grad(stock_rope, 2, 6), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)  # transformers' function from then on


def test_install_rope_replaces_and_restores_gpt_neox_rotary_only(stock_rope):
    from transformers.models.gpt_neox import modeling_gpt_neox

    def model(kind):
        return type("Model", (), {"config": type("Config", (), {"model_type": kind})()})()

    assert fastlora.install_rope(model("gpt_neox"), "split")
    assert modeling_gpt_neox.apply_rotary_pos_emb is fastlora.split_rotary_pos_emb
    assert not fastlora.install_rope(model("gpt_neox"), "transformers")
    assert modeling_gpt_neox.apply_rotary_pos_emb is stock_rope
    assert not fastlora.install_rope(model("llama"), "split")
    assert modeling_gpt_neox.apply_rotary_pos_emb is stock_rope
    with pytest.raises(ValueError, match="choose from"):
        fastlora.install_rope(model("gpt_neox"), "fused")


def test_split_rope_and_sync_free_steps_train_the_same_run(tiny_neox_dir, tmp_path, stock_rope):
    """Through the engine on the CPU: the same losses step by step and the same adapter with transformers'
    rotary, peft's LoRA and blocking steps as with the split rotary, the fused LoRA linear (dropout drawn
    inside it) and the sync-free TrainingArguments."""
    from tunebench.config.schema import CellConfig
    from tunebench.rundir import RunDir
    from tunebench.train import train_cell
    from tunebench.train.engine import RunOptions, sync_free, training_arguments

    cell = CellConfig.model_validate({
        "model": {"name": str(tiny_neox_dir)}, "method": "lora",
        "data": {"source": "builtin:classification", "task": "classification", "train_count": 16},
        "training": {"epochs": 1, "tokens_per_batch": 512, "max_seq_len": 128, "eval_each_epoch": False}})
    runs = {}
    knobs = {"rope": "split", "sync_free_steps": True, "fused_lora": True, "fused_lora_linear": True}
    for name, overrides in (("stock", {}), ("fast", knobs)):
        run = RunDir(tmp_path / name)
        summary = train_cell(cell, run, progress=False, options=RunOptions(plan_overrides=overrides, logging_steps=1))
        assert summary["plan"]["rope"] == overrides.get("rope", "transformers")
        runs[name] = ([json.loads(line)["loss"] for line in (run.train / "metrics.jsonl").read_text().splitlines()
                       if '"loss"' in line], load_file(run.train / "adapter" / "adapter_model.safetensors"))
    assert len(runs["fast"][0]) > 2
    assert runs["fast"][0] == pytest.approx(runs["stock"][0], rel=1e-5)
    for name, tensor in runs["stock"][1].items():
        torch.testing.assert_close(runs["fast"][1][name], tensor, rtol=1e-4, atol=1e-6)
    plan = dataclasses.replace(summary_plan(cell), sync_free_steps=True)
    args = training_arguments(cell, plan, RunDir(tmp_path / "args"), 10, "none")
    assert sync_free(plan) and not args.logging_nan_inf_filter and args.accelerator_config.non_blocking
    assert training_arguments(cell, summary_plan(cell), RunDir(tmp_path / "args"), 10, "none").logging_nan_inf_filter


def summary_plan(cell):
    from tunebench.train.recipes import resolve_plan

    return resolve_plan(cell, "causal", Device(cuda=False), 2048)
