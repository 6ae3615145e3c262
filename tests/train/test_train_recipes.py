"""Recipes resolve to the exact hyperparameters of the original study, or the fast defaults, per device."""

from __future__ import annotations

import pytest

from tunebench.config.schema import CellConfig
from tunebench.config.study import load_study
from tunebench.errors import UserError
from tunebench.train.recipes import Device, resolve_plan

CPU = Device(cuda=False)
GPU = Device(cuda=True, bf16=True, bitsandbytes=True)


def cell(**fields) -> CellConfig:
    return CellConfig.model_validate({"method": "lora", **fields})


def test_original_recipe_is_the_original_study():
    plan = resolve_plan(cell(method="qlora", training={"recipe": "original"}), "causal", GPU, 2048)
    assert (plan.quantization, plan.precision, plan.packing, plan.max_seq_len) == ("nf4", "fp16", "concat", 512)
    assert (plan.batch_size, plan.gradient_accumulation, plan.gradient_checkpointing) == (1, 4, True)
    assert (plan.optimizer, plan.learning_rate, plan.lr_scheduler, plan.warmup_ratio) == (
        "paged_adamw_32bit", 2e-4, "constant_with_warmup", 0.03)
    assert plan.max_grad_norm == 0.3 and plan.epochs == 5 and plan.notes == []
    summarization = cell(method="qlora", training={"recipe": "original"}, data={"task": "summarization"})
    assert resolve_plan(summarization, "causal", GPU, 2048).epochs == 1


def test_original_recipe_on_cpu_records_what_it_replaced():
    plan = resolve_plan(cell(training={"recipe": "original"}), "causal", CPU, 8192)
    assert (plan.precision, plan.optimizer, plan.quantization) == ("fp32", "adamw_torch", None)
    notes = " ".join(plan.notes)
    assert "paged_adamw_32bit" in notes and "fp16" in notes and "method: qlora" in notes


def test_fast_recipe_defaults():
    gpu = resolve_plan(cell(), "causal", GPU, 2048)
    assert (gpu.packing, gpu.tokens_per_batch, gpu.precision, gpu.optimizer) == (
        "length_grouped", 16384, "bf16", "adamw_torch_fused")
    assert gpu.size_to_memory and not gpu.attention_mask  # budget fitted once loaded; unmasked causal rows
    assert gpu.gradient_checkpointing is None  # decided from the memory estimate
    assert not gpu.fused_loss  # liger-kernel not reported importable by this Device
    assert resolve_plan(cell(), "causal", Device(cuda=True, bf16=True, liger=True), 2048).fused_loss
    assert (gpu.learning_rate, gpu.lr_scheduler, gpu.max_grad_norm) == (2e-4, "constant_with_warmup", 0.3)
    cpu = resolve_plan(cell(), "causal", CPU, 8192)
    assert (cpu.precision, cpu.optimizer, cpu.gradient_checkpointing) == ("fp32", "adamw_torch", False)
    assert cpu.packing == "length_grouped" and not cpu.size_to_memory and not cpu.fused_loss
    assert cpu.batch_size is None and cpu.tokens_per_batch == 2048  # the token budget alone sizes a batch
    assert resolve_plan(cell(), "seq2seq", CPU, 512).attention_mask  # only causal rows go unmasked
    encoder = resolve_plan(cell(method="full"), "encoder", GPU, 512)
    assert (encoder.tokens_per_batch, encoder.size_to_memory) == (2048, False)  # large budgets: causal only
    assert resolve_plan(cell(training={"packing": "padding_free"}), "causal", GPU, 2048).attention_mask
    original = resolve_plan(cell(method="qlora", training={"recipe": "original"}), "causal", GPU, 2048)
    assert original.attention_mask and not original.fused_loss and not original.size_to_memory


def test_fields_set_in_the_cell_win_and_full_uses_a_lower_rate():
    plan = resolve_plan(cell(training={"tokens_per_batch": 1024, "epochs": 2, "optimizer": "sgd",
                                       "learning_rate": 1e-3}), "causal", CPU, 8192)
    assert (plan.tokens_per_batch, plan.max_seq_len, plan.epochs, plan.optimizer, plan.learning_rate) == (
        1024, 1024, 2, "sgd", 1e-3)
    assert resolve_plan(cell(method="full"), "causal", CPU, 2048).learning_rate == 2e-5


def test_qlora_needs_cuda_and_bitsandbytes():
    with pytest.raises(UserError, match="needs a CUDA GPU") as err:
        resolve_plan(cell(method="qlora"), "causal", CPU, 2048)
    assert "method: lora" in err.value.fix
    with pytest.raises(UserError) as err:
        resolve_plan(cell(method="qlora"), "causal", Device(cuda=True, bf16=True), 2048)
    assert "pip install -e '.[gpu]'" in err.value.fix


def test_packing_that_needs_a_causal_model_is_refused_for_others():
    with pytest.raises(UserError, match="needs a causal language model"):
        resolve_plan(cell(training={"packing": "padding_free"}), "seq2seq", CPU, 512)


def test_prompting_methods_have_nothing_to_train():
    with pytest.raises(UserError, match="nothing to train"):
        resolve_plan(cell(method="few_shot"), "causal", CPU, 2048)


def test_zero_epochs_are_rejected_with_the_field_named(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndefaults: {method: lora}\n")
    with pytest.raises(UserError) as err:
        load_study(study, ["training.epochs=0"])
    assert "training.epochs = 0" in err.value.problem and "greater than or equal to 1" in err.value.problem
