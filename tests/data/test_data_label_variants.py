"""Labels that differ only by case, whitespace or Unicode form (issue 18, item 6): a warning by default, merged
into their most frequent spelling with data.cleaning.fold_labels."""

from __future__ import annotations

import json
import logging

from tunebench.config.schema import CleaningConfig, DataConfig
from tunebench.data.loader import load_source

CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"
ROWS = ([("Sports", 3), ("sports", 2), ("SPORTS ", 1), (CAFE_NFC, 2), (CAFE_NFD, 1), ("space", 2)])


def write_rows(path):
    lines = [json.dumps({"text": f"post {label} {i}", "label": label}) for label, n in ROWS for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_variants_are_warned_about_and_kept_apart(tmp_path, caplog):
    source = write_rows(tmp_path / "posts.jsonl")
    with caplog.at_level(logging.WARNING, logger="tunebench.data"):
        loaded = load_source(DataConfig(source=str(source), task="classification"))
    assert len(loaded.labels) == 6
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "differ only by case, whitespace or Unicode form" in warned and "data.cleaning.fold_labels" in warned
    assert "'Sports' (3 rows) / 'SPORTS' (1 rows) / 'sports' (2 rows)" not in warned  # most rows first
    assert "'Sports' (3 rows) / 'sports' (2 rows) / 'SPORTS' (1 rows)" in warned, warned


def test_fold_labels_merges_each_group_into_its_most_frequent_spelling(tmp_path, caplog):
    source = write_rows(tmp_path / "posts.jsonl")
    cfg = DataConfig(source=str(source), task="classification", cleaning=CleaningConfig(fold_labels=True))
    with caplog.at_level(logging.WARNING, logger="tunebench.data"):
        loaded = load_source(cfg)
    assert loaded.labels == sorted(["Sports", CAFE_NFC, "space"]) and not caplog.records
    targets = [ex.target for ex in loaded.splits["train"]]
    assert targets.count("Sports") == 6 and targets.count(CAFE_NFC) == 3
    assert loaded.folded_labels == {"sports": "Sports", "SPORTS": "Sports", CAFE_NFD: CAFE_NFC}


def test_the_warning_reaches_the_command_line(tmp_path, cli, tiny_llama_dir):
    # a test split of its own: classes of one row cannot give one to a carved evaluation split
    source = tmp_path / "posts.jsonl"
    rows = [{"text": f"post {label} {i}", "label": label, "split": "train"} for label, n in ROWS for i in range(n)]
    rows.append({"text": "post space test", "label": "space", "split": "test"})
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    shown = cli("data", "show", str(source), "--task", "classification", "--tokenizer", str(tiny_llama_dir))
    assert shown.returncode == 0, shown.stderr
    said = " ".join(shown.stderr.split())
    expected = f"'{CAFE_NFC}' = 'caf\\xe9' (2 rows) / '{CAFE_NFD}' = 'cafe\\u0301' (1 rows)"
    assert "data.cleaning.fold_labels" in said and expected in said, said
