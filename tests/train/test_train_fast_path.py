"""The fast recipe's GPU path, checked on CPU: unmasked right-padded causal rows, the fused-loss forward, budgets."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tunebench.config.schema import CellConfig
from tunebench.train.batching import METERING_KEYS, PAD_MULTIPLE, PaddedCollator, collator_for, group_by_length
from tunebench.train.checkpoints import FITTED
from tunebench.train.features import IGNORE, encode_causal
from tunebench.train.metering import Meter
from tunebench.train.modeling import (
    MIN_TOKENS_PER_BATCH,
    fit_to_memory,
    install_fused_loss,
    largest_fitting_tokens,
    training_memory,
)
from tunebench.train.recipes import Device, resolve_plan

PAIRS = [
    ("###Sentence: The engine makes a rattling noise###Class:", "autos"),
    ("###Sentence: Simmer the onions in butter until golden, then add the garlic.###Class:", "cooking"),
    ("###Sentence: The rocket reached orbit###Class:", "space"),
    ("###Sentence: Plant the tomato seedlings after the last frost and water them daily.###Class:", "gardening"),
]


def causal_model(model_dir, attn: str = "sdpa"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn)
    model.config.use_cache = False
    return model.eval()


def row_losses(model, batch) -> list[float]:
    """Mean loss over each row's targets (position t predicts t + 1)."""
    inputs = {k: v for k, v in batch.items() if k != "labels" and k not in METERING_KEYS}
    logits = model(**inputs).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    scored = labels != IGNORE
    return [float(losses[r][scored[r]].mean()) for r in range(labels.shape[0])]


@pytest.mark.parametrize("fixture", ["tiny_neox_dir", "tiny_llama_dir"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_unmasked_right_padded_rows_score_each_example_as_alone(request, fixture, attn, tiny_tokenizer):
    model = causal_model(request.getfixturevalue(fixture), attn)
    encoded = encode_causal(tiny_tokenizer, PAIRS, loss_on="full", max_len=512)
    pad = tiny_tokenizer.pad_token_id
    batch = PaddedCollator(pad, causal_unmasked=True)(encoded.features)
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] % PAD_MULTIPLE == 0
    assert int(batch["real_tokens"]) == sum(encoded.lengths) < batch["input_ids"].numel()
    with torch.no_grad():
        padded = row_losses(model, batch)
        alone = [row_losses(model, PaddedCollator(pad)([f]))[0] for f in encoded.features]
        # Left padding without a mask would let real tokens attend to pads: proof the check can fail.
        width = batch["input_ids"].shape[1]
        left = {"input_ids": torch.tensor([[pad] * (width - len(f["input_ids"])) + f["input_ids"]
                                           for f in encoded.features]),
                "labels": torch.tensor([[IGNORE] * (width - len(f["labels"])) + f["labels"]
                                        for f in encoded.features])}
        mixed = row_losses(model, left)
    assert padded == pytest.approx(alone, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(mixed, alone, strict=True)) > 1e-3


def test_unmasked_rows_are_only_for_causal_models_and_their_pads_are_not_counted(tiny_tokenizer):
    assert collator_for("length_grouped", 0, "causal", attention_mask=False).causal_unmasked
    assert not collator_for("length_grouped", 0, "seq2seq", attention_mask=False).causal_unmasked
    encoded = encode_causal(tiny_tokenizer, PAIRS, loss_on="completion", max_len=512)
    batch = PaddedCollator(tiny_tokenizer.pad_token_id, causal_unmasked=True)(encoded.features)
    meter = Meter("causal", tiny_tokenizer.eos_token_id)
    meter.count(batch)

    class One:
        num_processes = 1

    meter.flush(One())
    assert (meter.tokens, meter.examples) == (sum(encoded.lengths), len(PAIRS))
    ends = [n - 1 for n in encoded.lengths]
    assert all(batch["labels"][r, e] == tiny_tokenizer.eos_token_id for r, e in enumerate(ends))
    assert all((batch["labels"][r, e + 1:] == IGNORE).all() for r, e in enumerate(ends))


def test_length_groups_count_rows_at_their_padded_width():
    lengths = [10, 70, 20, 65, 30, 100, 5, 66, 67, 68]
    batches = group_by_length(lengths, rows=None, budget=256, seed=0, multiple=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert -(-max(lengths[i] for i in batch) // 64) * 64 * len(batch) <= 256
    unrounded = group_by_length(lengths, rows=None, budget=256, seed=0)
    assert [3, 7, 8] in unrounded and [3, 7, 8] not in batches  # 3 x 68 fits 256, 3 x 128 does not


@pytest.mark.parametrize("accumulated", [None, 40])
def test_fused_loss_forward_matches_the_models_own_loss_and_gradients(tiny_neox_dir, tiny_tokenizer, accumulated):
    def reference_loss_sum(weight, hidden, targets):  # what liger computes, in plain torch
        return torch.nn.functional.cross_entropy(hidden @ weight.T, targets, ignore_index=IGNORE, reduction="sum")

    encoded = encode_causal(tiny_tokenizer, PAIRS, loss_on="completion", max_len=512)
    batch = PaddedCollator(tiny_tokenizer.pad_token_id, causal_unmasked=True)(encoded.features)
    inputs = {"input_ids": batch["input_ids"], "labels": batch["labels"]}
    extra = {} if accumulated is None else {"num_items_in_batch": torch.tensor(accumulated)}
    plain, fused = causal_model(tiny_neox_dir).train(), causal_model(tiny_neox_dir).train()
    for model in (plain, fused):
        model.config.hidden_dropout = model.config.attention_dropout = 0.0
    install_fused_loss(fused, reference_loss_sum)
    expected = plain(**inputs, **extra).loss
    got = fused(**inputs, **extra)
    assert got.logits is None and got.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    expected.backward()
    got.loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    with torch.no_grad():  # without labels (evaluation) the forward is the model's own, logits included
        assert fused(input_ids=batch["input_ids"]).logits.shape[-1] == fused.config.vocab_size


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("liger_kernel") is None,
                    reason="liger-kernel's Triton kernels need CUDA")
def test_liger_fused_loss_matches_on_cuda(tiny_neox_dir, tiny_tokenizer):
    encoded = encode_causal(tiny_tokenizer, PAIRS, loss_on="completion", max_len=512)
    batch = PaddedCollator(tiny_tokenizer.pad_token_id, causal_unmasked=True)(encoded.features)
    inputs = {"input_ids": batch["input_ids"].cuda(), "labels": batch["labels"].cuda()}
    plain, fused = causal_model(tiny_neox_dir).cuda(), install_fused_loss(causal_model(tiny_neox_dir).cuda())
    assert float(fused(**inputs).loss) == pytest.approx(float(plain(**inputs).loss), rel=1e-3)


def test_token_budget_halves_until_it_fits(tiny_neox_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_neox_dir)
    gpu = Device(cuda=True, bf16=True, liger=True)
    plan = resolve_plan(CellConfig.model_validate({"method": "lora"}), "causal", gpu, 2048)
    need = training_memory(model, plan, 4096, checkpointing=False)
    assert need == 2 * training_memory(model, plan, 2048, checkpointing=False)  # linear in tokens when fused
    assert largest_fitting_tokens(16384, lambda n: training_memory(model, plan, n, False), need) == 4096
    assert largest_fitting_tokens(16384, lambda n: 10**15, 1.0) == MIN_TOKENS_PER_BATCH  # then checkpointing
    assert training_memory(model, plan, 4096, checkpointing=True) < need
    assert fit_to_memory(model, plan, "cpu").gradient_checkpointing is False  # no GPU: never checkpoint


def test_run_options_override_the_plan_and_can_skip_checkpoints(tiny_neox_dir, tmp_path):
    from tunebench.rundir import RunDir
    from tunebench.train import train_cell
    from tunebench.train.engine import RunOptions

    cell = CellConfig.model_validate({
        "model": {"name": str(tiny_neox_dir)}, "method": "lora",
        "data": {"source": "builtin:classification", "train_count": 16},
        "training": {"epochs": 1, "tokens_per_batch": 512, "max_seq_len": 128},
    })
    run = RunDir(tmp_path / "cell")
    options = RunOptions(plan_overrides={"attention_mask": True}, logging_steps=1, save=False)
    summary = train_cell(cell, run, progress=False, options=options)
    assert summary["plan"]["attention_mask"] and summary["weights"] is None
    assert not any(run.checkpoints.glob("checkpoint-*")) and not any(run.checkpoints.glob("epoch-*"))
    logged = (run.train / "metrics.jsonl").read_text().splitlines()
    assert len([line for line in logged if '"loss"' in line]) == summary["steps"]  # one log per step
    fitted = json.loads((run.train / FITTED).read_text())  # what --resume reuses, so its batches are the same
    assert fitted == {"tokens_per_batch": 512, "max_seq_len": 128, "gradient_checkpointing": False}
