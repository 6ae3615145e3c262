"""The loaders on the real data in ../shared (through TUNEBENCH_SHARED; skipped when it is absent)."""

from __future__ import annotations

from collections import Counter

from tunebench.config.schema import CleaningConfig, DataConfig
from tunebench.data import load_task_data


def test_samsum_empty_dialogue_is_dropped_and_counted(shared_dir):
    cfg = DataConfig(source=str(shared_dir / "datasets" / "samsum"), task="summarization", eval_split="validation")
    data = load_task_data(cfg)
    assert data.report.dropped == {"empty dialogue": 1}
    assert data.report.rows == {"train": 14731, "validation": 818}
    assert data.report.validation_from == "source split 'validation'"
    assert all("\r" not in ex.input for ex in data.train[:500])  # CRLF line breaks normalised


def test_newsgroups_stratified_sample_with_cleaning(shared_dir):
    cleaning = CleaningConfig(strip_headers=True, strip_footers=True, strip_quotes=True)
    cfg = DataConfig(source=str(shared_dir / "datasets" / "newsgroups" / "train.jsonl"), eval_split="validation",
                     train_fraction=0.05, cleaning=cleaning)
    data = load_task_data(cfg)
    assert len(data.labels) == 20 and set(data.report.dropped) == {"empty text"}
    # scikit-learn's heuristic cuts at the first blank line, so a header with a blank line in it leaves a rest.
    assert sum(ex.input.startswith("From:") for ex in data.train) < 0.01 * len(data.train)
    per_label = Counter(ex.target for ex in data.train)
    assert set(per_label) == set(data.labels) and max(per_label.values()) - min(per_label.values()) <= 12
    assert not {ex.id for ex in data.train} & {ex.id for ex in data.validation}
