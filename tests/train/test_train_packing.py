"""Features, batches and packing: EOS stays a trained target, and packed examples never see each other."""

from __future__ import annotations

import pytest
import torch

from tunebench.config.schema import CellConfig
from tunebench.models.loading import ModelSource
from tunebench.train.batching import PaddedCollator, PaddingFreeCollator, batch_sampler, group_by_length, pack_by_tokens
from tunebench.train.features import IGNORE, concat_rows, encode_causal, encode_seq2seq
from tunebench.train.modeling import prepare_model
from tunebench.train.recipes import Device, resolve_plan

PAIRS = [
    ("###Sentence: The engine makes a rattling noise###Class:", "autos"),
    ("###Sentence: Our pitcher threw a no-hitter###Class:", "baseball"),
    ("###Sentence: Simmer the onions in butter until golden, then add the garlic.###Class:", "cooking"),
    ("###Sentence: The rocket reached orbit###Class:", "space"),
    ("###Sentence: Plant the tomato seedlings after the last frost and water them daily.###Class:", "gardening"),
]


def test_eos_is_appended_and_trained_although_it_is_the_pad_token(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.pad_token_id == eos  # the case that breaks label-masking-by-pad-id
    encoded = encode_causal(tiny_tokenizer, PAIRS, loss_on="completion", max_len=512)
    for (prompt, completion), feature in zip(PAIRS, encoded.features, strict=True):
        n_prompt = len(tiny_tokenizer(prompt)["input_ids"])
        assert feature["input_ids"][-1] == eos and feature["labels"][-1] == eos
        assert all(label == IGNORE for label in feature["labels"][:n_prompt])
        completion_ids = tiny_tokenizer(completion, add_special_tokens=False)["input_ids"]
        assert feature["labels"][n_prompt:] == [*completion_ids, eos]
    for collate in (PaddedCollator(pad_id=eos), PaddingFreeCollator()):
        batch = collate(encoded.features)
        ends = batch["attention_mask"].sum(1) - 1 if "attention_mask" in batch else None
        if ends is not None:  # padded rows: the last real position of each row is a trained EOS
            assert all(batch["labels"][row, end] == eos for row, end in enumerate(ends.tolist()))
            assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
        else:  # one packed row: every example's EOS is still a target
            assert (batch["labels"] == eos).sum() == len(PAIRS)


def test_full_sequence_loss_trains_the_prompt_too(tiny_tokenizer):
    feature = encode_causal(tiny_tokenizer, PAIRS[:1], loss_on="full", max_len=512).features[0]
    assert feature["labels"][0] == IGNORE and feature["labels"][1:] == feature["input_ids"][1:]


def test_long_prompts_keep_their_end_and_the_whole_completion(tiny_tokenizer):
    encoded = encode_causal(tiny_tokenizer, [(PAIRS[4][0] * 10, "gardening")], loss_on="completion", max_len=40)
    feature = encoded.features[0]
    assert encoded.truncated == 1 and len(feature["input_ids"]) == 40
    assert tiny_tokenizer.decode(feature["input_ids"]).endswith("###Class:gardening<|endoftext|>")


def test_seq2seq_targets_end_with_eos(tiny_tokenizer):
    encoded = encode_seq2seq(tiny_tokenizer, PAIRS, max_len=512)
    batch = PaddedCollator(tiny_tokenizer.pad_token_id, seq2seq=True)(encoded.features)
    for row in batch["labels"].tolist():
        targets = [t for t in row if t != IGNORE]
        assert targets[-1] == tiny_tokenizer.eos_token_id


def loaded(model_dir, attn: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attn)
    cell = CellConfig.model_validate({"method": "full", "model": {"name": str(model_dir)}})
    plan = resolve_plan(cell, "causal", Device(cuda=False), 512)
    source = ModelSource(str(model_dir), str(model_dir), None, "causal", True)
    return prepare_model(model, cell, source, plan, checkpointing=False).eval()


def per_example_losses(model, batch, sizes: list[int]) -> list[float]:
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, :-1]
    labels = batch["labels"][0, 1:]
    losses = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    out, start = [], 0
    for size in sizes:
        mask = labels[start: start + size - 1] != IGNORE
        out.append(float(losses[start: start + size - 1][mask].mean()))
        start += size
    return out


@pytest.mark.parametrize("fixture", ["tiny_neox_dir", "tiny_llama_dir"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_packing_keeps_examples_apart(request, fixture, attn, tiny_tokenizer):
    model = loaded(request.getfixturevalue(fixture), attn)
    encoded = encode_causal(tiny_tokenizer, PAIRS, loss_on="full", max_len=512)
    packed = PaddingFreeCollator()(encoded.features)
    assert packed["input_ids"].shape[0] == 1 < len(PAIRS)
    assert packed["input_ids"].numel() == sum(encoded.lengths)  # not one pad token
    with torch.no_grad():
        inside = per_example_losses(model, packed, encoded.lengths)
        alone = [per_example_losses(model, PaddingFreeCollator()([f]), [n])[0]
                 for f, n in zip(encoded.features, encoded.lengths, strict=True)]
        # The original's concatenation (positions running on, attention across examples) does mix them:
        # evidence that the comparison above would catch contamination.
        joined = {k: v for k, v in packed.items() if k != "position_ids"}
        mixed = per_example_losses(model, joined, encoded.lengths)
    assert inside == pytest.approx(alone, abs=1e-4)
    assert max(abs(a - b) for a, b in zip(mixed[1:], alone[1:], strict=True)) > 1e-3


def test_token_budget_batches_are_fixed_complete_and_reshuffled():
    lengths = [5, 40, 17, 33, 8, 21, 12, 3, 29, 9, 14, 38]
    sampler = batch_sampler("padding_free", lengths, batch_size=4, tokens=64, seed=3)
    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in epoch0)
    assert len(epoch0) < len(lengths) and len(epoch0) == len(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(map(sorted, epoch1)) == sorted(map(sorted, epoch0))
    sampler.set_epoch(0)
    assert list(sampler) == epoch0  # a resumed epoch replays the same order
    assert len(pack_by_tokens(lengths, 64, seed=3)) == len(epoch0)


def test_length_grouped_batches_respect_rows_and_padded_tokens():
    lengths = [5, 40, 17, 33, 8, 21, 12, 3, 29, 9, 14, 38]
    batches = group_by_length(lengths, rows=3, budget=80, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and max(lengths[i] for i in batch) * len(batch) <= 80


def test_random_batches_keep_their_count_across_epochs():
    sampler = batch_sampler("none", [7] * 10, batch_size=4, tokens=None, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert len(first) == len(list(sampler)) == len(sampler) == 3 and first != list(sampler)


def test_concat_rows_cut_the_stream_into_fixed_rows(tiny_tokenizer):
    encoded = encode_causal(tiny_tokenizer, PAIRS * 4, loss_on="completion", max_len=512)
    rows = concat_rows(encoded, 32, seed=0)
    assert all(n == 32 for n in rows.lengths[:-1]) and 0 < rows.lengths[-1] <= 32
    assert sum(rows.lengths) == sum(encoded.lengths)
    eos = tiny_tokenizer.eos_token_id
    assert sum(r["labels"].count(eos) for r in rows.features) == len(PAIRS) * 4
