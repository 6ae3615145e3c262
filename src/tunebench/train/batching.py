"""Batches: which examples train together, and how they become tensors.

Packing strategies (`training.packing`):
  padding_free    causal LMs: several examples in one row, no padding; position ids restart at 0 for each
                  example, which transformers turns into block-diagonal attention (sdpa/eager build the mask from
                  the position ids, flash attention uses them as varlen boundaries), so no example sees another.
                  Rows are filled up to a token budget (`tokens_per_batch`).
  concat          the original study's rows: examples concatenated and cut every `max_seq_len` tokens, with
                  attention across examples (see features.concat_rows); `batch_size` rows per micro-batch.
  length_grouped  padded batches of examples of similar length (little padding), up to `batch_size` rows and
                  `tokens_per_batch` padded tokens. Causal rows may go without an attention mask
                  (`Plan.attention_mask = False`): padding is on the right, and causal attention never lets a
                  real token see a later position, so each example's loss is the same as alone while SDPA
                  keeps its flash kernel (`is_causal`, no mask). Such rows are padded to a multiple of
                  PAD_MULTIPLE (tensor-core friendly widths at a few tokens' cost), and carry their non-pad
                  token count as `real_tokens` for metering (the Trainer removes it before the forward).
  none            padded batches of `batch_size` random examples.

Batch samplers keep the number of batches fixed across epochs (the Trainer sizes its schedule from it): packed
and length-grouped batches are planned once and only their order changes each epoch; random batches reshuffle
the examples each epoch. The epoch comes from `set_epoch`, so a resumed run replays the same order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

from tunebench.train.features import IGNORE

OPEN_BINS = 16  # padding-free first-fit looks at this many open rows: near-optimal fill, linear time
PAD_MULTIPLE = 8  # unmasked causal rows are padded to a multiple of this width
METERING_KEYS = ("real_tokens",)  # batch entries for the meter only, never given to the model


class FixedBatches:
    """A planned list of batches whose order is reshuffled every epoch."""

    def __init__(self, batches: list[list[int]], seed: int, shuffle: bool = True) -> None:
        self.batches = batches
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return iter([self.batches[i] for i in order])


class RandomBatches(FixedBatches):
    """`batch_size` random examples per batch, reshuffled every epoch."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        super().__init__([], seed)
        self.n = n
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return iter([order[i: i + self.batch_size] for i in range(0, self.n, self.batch_size)])


def pack_by_tokens(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """Padding-free rows: examples in a seeded random order, first-fit into rows of at most `budget` tokens."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    closed: list[list[int]] = []
    open_bins: list[tuple[int, list[int]]] = []  # (tokens used, indices)
    for i in order:
        for b, (used, members) in enumerate(open_bins):
            if used + lengths[i] <= budget:
                members.append(i)
                open_bins[b] = (used + lengths[i], members)
                break
        else:
            open_bins.append((lengths[i], [i]))
            if len(open_bins) > OPEN_BINS:
                closed.append(open_bins.pop(0)[1])
    return closed + [members for _, members in open_bins]


def group_by_length(lengths: list[int], rows: int | None, budget: int | None, seed: int,
                    multiple: int = 1) -> list[list[int]]:
    """Padded batches of similar lengths: at most `rows` rows and `budget` tokens counting the padding (rows
    padded to a multiple of `multiple`)."""
    rng = random.Random(seed)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending lengths: the newcomer is the longest of its batch
        width = -(-lengths[i] // multiple) * multiple
        too_wide = budget is not None and width * (len(current) + 1) > budget
        if current and ((rows is not None and len(current) >= rows) or too_wide):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def batch_sampler(packing: str, lengths: list[int], *, batch_size: int | None, tokens: int | None, seed: int,
                  shuffle: bool = True, multiple: int = 1) -> FixedBatches:
    if packing == "padding_free":
        return FixedBatches(pack_by_tokens(lengths, tokens or max(lengths), seed), seed, shuffle)
    if packing == "length_grouped":
        return FixedBatches(group_by_length(lengths, batch_size, tokens, seed, multiple), seed, shuffle)
    batch_size = batch_size or 1
    if not shuffle:
        n = len(lengths)
        return FixedBatches([list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)], seed, False)
    return RandomBatches(len(lengths), batch_size, seed)


# ---------------------------------------------------------------- collators


class PaddingFreeCollator:
    """Flattens a batch into one row: no padding, position ids restarting at every example."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for f in features:
            ids += f["input_ids"]
            labels += [IGNORE, *f["labels"][1:]]
            positions += range(len(f["input_ids"]))
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions])}


class PaddedCollator:
    """Right-pads rows to the longest in the batch; labels are padded with -100 by length, never by token id.

    `causal_unmasked`: no attention mask (causal rows only, see the module docstring); widths rounded up to a
    multiple of PAD_MULTIPLE and the non-pad token count in `real_tokens`.
    """

    def __init__(self, pad_id: int, seq2seq: bool = False, causal_unmasked: bool = False) -> None:
        self.pad_id = pad_id
        self.seq2seq = seq2seq
        self.causal_unmasked = causal_unmasked

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.causal_unmasked:
            width = -(-width // PAD_MULTIPLE) * PAD_MULTIPLE
        rows = [(f["input_ids"], width - len(f["input_ids"])) for f in features]
        batch = {"input_ids": torch.tensor([ids + [self.pad_id] * gap for ids, gap in rows])}
        if self.causal_unmasked:
            batch["real_tokens"] = torch.tensor(sum(len(ids) for ids, _ in rows))
        else:
            batch["attention_mask"] = torch.tensor([[1] * len(ids) + [0] * gap for ids, gap in rows])
        if isinstance(features[0]["labels"], int):
            batch["labels"] = torch.tensor([f["labels"] for f in features])
            return batch
        label_width = max(len(f["labels"]) for f in features) if self.seq2seq else width
        batch["labels"] = torch.tensor([f["labels"] + [IGNORE] * (label_width - len(f["labels"])) for f in features])
        return batch


def collator_for(packing: str, pad_id: int, kind: str, attention_mask: bool = True) -> Any:
    if packing == "padding_free":
        return PaddingFreeCollator()
    return PaddedCollator(pad_id, seq2seq=kind == "seq2seq", causal_unmasked=kind == "causal" and not attention_mask)
