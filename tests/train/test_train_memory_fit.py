"""The fast recipe's memory fitter on a GPU, checked on CPU: the token budget and gradient checkpointing chosen
from the memory a process has left, for the RedPajama-3B architecture the H200 runs measured."""

from __future__ import annotations

import pytest
import torch

from tunebench.config.schema import CellConfig
from tunebench.models.presets import PRESETS
from tunebench.train import modeling
from tunebench.train.modeling import MIN_TOKENS_PER_BATCH, fit_plan, fit_to_memory, training_memory
from tunebench.train.recipes import Device, resolve_plan

GIB = 2**30
GPU = Device(cuda=True, bf16=True, bitsandbytes=True, liger=True)


@pytest.fixture(scope="module")
def redpajama_3b():
    """RedPajama-3B built on the meta device: its real shapes (32 layers, 2,560 hidden) without any memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = dict(PRESETS["redpajama-3b"].architecture)
    config = AutoConfig.for_model(arch.pop("model_type"), **arch)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def fast_plan(method: str = "qlora", **training):
    return resolve_plan(CellConfig.model_validate({"method": method, "training": training}), "causal", GPU, 2048)


def test_qlora_under_a_24gib_cap_checkpoints_for_8x_the_tokens(redpajama_3b, monkeypatch):
    # The H200 run: 80% of what the 24 GiB cap left after loading was 15.0 GiB, which fitted 2,048 tokens
    # without checkpointing (4,096 need 15.0 GiB); with checkpointing 16,384 need 4.4 GiB.
    monkeypatch.setattr(modeling, "gpu_memory_budget", lambda device: int(18.7 * GIB))
    plan = fit_to_memory(redpajama_3b, fast_plan(), "cuda:0")
    assert (plan.tokens_per_batch, plan.gradient_checkpointing) == (16384, True)
    assert "checkpointing on: 16384 tokens per batch fit with it, 2048 without (8x" in plan.notes[-1]
    assert "fitted to 15.0 GiB" in plan.notes[-1]


@pytest.mark.parametrize(("fits_without", "expected"), [
    (16384, (16384, False)),  # bf16 LoRA on a whole H200: nothing to gain
    (8192, (8192, False)),    # twice the tokens do not pay for the recomputation
    (4096, (16384, True)),    # four times do
])
def test_checkpointing_is_chosen_from_4x_the_tokens_per_step(redpajama_3b, fits_without, expected):
    plan = fast_plan("lora")
    fitted = fit_plan(redpajama_3b, plan, training_memory(redpajama_3b, plan, fits_without, False))
    assert (fitted.tokens_per_batch, fitted.gradient_checkpointing) == expected
    assert f"16384 tokens per batch fit with it, {fits_without} without" in fitted.notes[-1]


def test_checkpointing_when_not_even_the_smallest_budget_fits_without(redpajama_3b):
    plan = fast_plan()
    budget = training_memory(redpajama_3b, plan, MIN_TOKENS_PER_BATCH, False) - 1
    fitted = fit_plan(redpajama_3b, plan, budget)
    assert (fitted.tokens_per_batch, fitted.gradient_checkpointing) == (16384, True)  # sized for checkpointing
    assert "checkpointing on: 2048 tokens do not fit without it, 16384 with it" in fitted.notes[-1]


@pytest.mark.parametrize(("configured", "tokens"), [(True, 16384), (False, 2048)])
def test_configured_checkpointing_is_kept_and_the_budget_sized_for_it(redpajama_3b, configured, tokens):
    plan = fast_plan(gradient_checkpointing=configured)
    fitted = fit_plan(redpajama_3b, plan, training_memory(redpajama_3b, plan, 4096, False) - 1)
    assert (fitted.tokens_per_batch, fitted.gradient_checkpointing) == (tokens, configured)
    assert fitted.notes[-1].endswith("gradient_checkpointing as configured")


@pytest.mark.parametrize(("fits_without", "checkpointing"), [(8192, False), (4096, True)])
def test_a_configured_token_budget_is_kept_and_checkpointed_only_if_it_does_not_fit(
        redpajama_3b, fits_without, checkpointing):
    plan = fast_plan(tokens_per_batch=8192)
    fitted = fit_plan(redpajama_3b, plan, training_memory(redpajama_3b, plan, fits_without, False))
    assert (fitted.tokens_per_batch, fitted.gradient_checkpointing) == (8192, checkpointing)
    both_fixed = fast_plan(tokens_per_batch=8192, gradient_checkpointing=False)
    assert fit_plan(redpajama_3b, both_fixed, 1.0) is both_fixed
