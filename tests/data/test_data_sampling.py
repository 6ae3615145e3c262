"""Sampling: seeded, stratified, nested; validation carved without overlapping training examples."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import pytest

from tunebench.config.schema import DataConfig
from tunebench.data import load_task_data
from tunebench.errors import UserError

FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)


def ids(examples) -> set[str]:
    return {ex.id for ex in examples}


def sample(**fields):
    return load_task_data(DataConfig(source="builtin:classification", **fields))


def test_same_seed_same_sample_other_seed_other_sample():
    a, b, c = sample(train_fraction=0.25, seed=3), sample(train_fraction=0.25, seed=3), sample(train_fraction=0.25)
    assert [ex.id for ex in a.train] == [ex.id for ex in b.train] and a.data_hash == b.data_hash
    assert ids(a.train) != ids(c.train) and a.data_hash != c.data_hash


def test_fractions_are_nested_and_stratified():
    samples = [sample(train_fraction=f, seed=7) for f in FRACTIONS]
    for smaller, larger in pairwise(samples):
        assert ids(smaller.train) < ids(larger.train)
    for f, data in zip(FRACTIONS, samples, strict=True):
        per_label = Counter(ex.target for ex in data.train)
        # 20 posts per label, 2 carved for validation: 18 left, of which round(f * 18) (at least one).
        assert per_label == dict.fromkeys(data.labels, max(1, round(f * 18)))
    assert len({s.data_hash for s in samples}) == len(samples)


def test_counts_are_nested_and_proportional():
    samples = [sample(train_count=n, seed=1) for n in (5, 8, 17, 40, 144)]
    for smaller, larger in pairwise(samples):
        assert ids(smaller.train) < ids(larger.train)
    assert Counter(ex.target for ex in samples[1].train) == dict.fromkeys(samples[1].labels, 1)
    assert sorted(Counter(ex.target for ex in samples[3].train).values()) == [5] * 8


def test_validation_is_carved_stratified_and_never_overlaps_train():
    for fraction in FRACTIONS:
        data = sample(train_fraction=fraction, seed=11)
        assert not ids(data.validation) & ids(data.train)
        assert Counter(ex.target for ex in data.validation) == dict.fromkeys(data.labels, 2)
        assert data.report.validation_from == "carved from train"
    # The carved validation split does not depend on the training fraction.
    assert ids(sample(train_fraction=0.1, seed=11).validation) == ids(sample(seed=11).validation)
    assert len(sample(validation_size=0.25).validation) == 8 * 5


def test_summarization_sampling_is_nested_too():
    make = lambda f: load_task_data(DataConfig(source="builtin:summarization", task="summarization",  # noqa: E731
                                               train_fraction=f))
    small, large = make(0.2), make(0.6)
    assert ids(small.train) < ids(large.train) and not ids(large.train) & ids(large.validation)
    assert len(large.validation) == 7 and len(small.train) == round(0.2 * 65)


def test_fraction_outside_range_and_count_too_large():
    with pytest.raises(ValueError, match="less than or equal to 1"):
        DataConfig(train_fraction=1.5)
    with pytest.raises(UserError, match=r"train_count = 145 is larger than the training split \(144 rows"):
        sample(train_count=145)
    # The sampler itself refuses a bad fraction too (for configs built without validation).
    with pytest.raises(UserError, match=r"outside \(0, 1\]"):
        load_task_data(DataConfig.model_construct(**{**DataConfig().model_dump(), "train_fraction": 0.0,
                                                      "cleaning": DataConfig().cleaning}))
