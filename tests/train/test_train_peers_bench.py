"""benchmarks/train_peers.py's bookkeeping: the ratios line, token counting per micro-batch, length grouping."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import train_peers


def test_ratios_compare_every_tunebench_row_with_every_peer_and_the_fastest_trl_row():
    rows = [{"system": "tunebench-fast", "tokens_per_s": 300.0}, {"system": "trl-a", "tokens_per_s": 100.0},
            {"system": "trl-b", "tokens_per_s": 150.0}, {"system": "hf-trainer-padded", "tokens_per_s": 60.0},
            {"system": "trl-c", "error": "exit 1"}, {"benchmark": "train_peers"}]
    line = train_peers.ratios(rows)
    assert line["ratios"] == {"tunebench-fast / trl-a": 3.0, "tunebench-fast / trl-b": 2.0,
                              "tunebench-fast / hf-trainer-padded": 5.0}
    assert line["trl_best"] == "trl-b" and line["vs_trl_best"] == {"tunebench-fast": 2.0}


def test_counting_takes_the_attention_mask_or_the_whole_padding_free_row():
    class Base:
        def training_step(self, model, inputs, num_items_in_batch=None):
            return 0

    trainer = train_peers.counting(Base)()
    trainer.pending = []
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]])
    trainer.training_step(None, {"input_ids": torch.zeros(2, 5), "attention_mask": mask})
    trainer.training_step(None, {"input_ids": torch.zeros(1, 7), "position_ids": torch.arange(7)[None]})
    assert [int(t) for t in trainer.pending] == [7, 7]


def test_grouping_uses_the_field_this_transformers_version_has():
    @dataclasses.dataclass
    class Newer:
        train_sampling_strategy: str = "random"

    @dataclasses.dataclass
    class Older:
        group_by_length: bool = False

    assert train_peers.grouping(Newer) == {"train_sampling_strategy": "group_by_length"}
    assert train_peers.grouping(Older) == {"group_by_length": True}
