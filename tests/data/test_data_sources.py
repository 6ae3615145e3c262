"""Every source kind with column mapping: built-in samples, JSONL, CSV, Parquet, directories, the hub."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from tunebench.config.schema import DataConfig
from tunebench.data import load_source, load_task_data
from tunebench.data.sources import splits_from_dataset_dict
from tunebench.errors import UserError

POSTS = [("The pitcher threw a shutout last night", "baseball"), ("Add garlic after the onions soften", "cooking"),
         ("The rocket reached orbit on time", "space"), ("Our shortstop made two errors again", "baseball"),
         ("Bake the bread at 220 degrees", "cooking"), ("The probe sent photos of the moon", "space")]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def posts(text_key: str = "body", label_key: str = "topic", **extra) -> list[dict]:
    return [{text_key: t, label_key: lab, **extra} for t, lab in POSTS]


def test_builtin_sources_have_their_splits_and_labels():
    cls = load_task_data(DataConfig(source="builtin:classification"))
    assert cls.report.rows == {"train": 160, "test": 96}
    assert len(cls.labels) == 8 and cls.labels == sorted(cls.labels)
    assert Counter(ex.target for ex in cls.test) == dict.fromkeys(cls.labels, 12)
    summ = load_task_data(DataConfig(source="builtin:summarization", task="summarization"))
    assert summ.labels is None and summ.report.rows == {"train": 72, "test": 48}
    assert all(":" in ex.input and ex.target for ex in summ.test)


def test_jsonl_with_column_mapping_and_ids(tmp_path):
    path = write_jsonl(tmp_path / "posts.jsonl", [dict(r, uid=f"p{i}") for i, r in enumerate(posts())])
    cfg = DataConfig(source=str(path), columns={"text": "body", "label": "topic", "id": "uid"})
    loaded = load_source(cfg)
    assert list(loaded.splits) == ["train"]  # no split column: the whole file is the train split
    assert loaded.splits["train"][0].id == "p0" and loaded.labels == ["baseball", "cooking", "space"]


def test_csv_with_split_column(tmp_path):
    rows = [dict(r, part="train") for r in posts()] + [dict(r, part="test") for r in posts()[:3]]
    path = write_csv(tmp_path / "posts.csv", rows)
    cfg = DataConfig(source=str(path), columns={"text": "body", "label": "topic", "split": "part"})
    data = load_task_data(cfg)
    assert data.report.rows == {"train": 6, "test": 3}
    assert [ex.target for ex in data.test] == ["baseball", "cooking", "space"]
    assert data.test[0].id == "test-0"  # no id column: ids name the split and row


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"dialog": f"Ann: hi {i}\nBob: hello", "gist": f"Ann and Bob greet, take {i}."} for i in range(5)]
    path = tmp_path / "chats.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    cfg = DataConfig(source=str(path), task="summarization", columns={"dialogue": "dialog", "summary": "gist"})
    loaded = load_source(cfg)
    first = loaded.splits["train"][0]
    assert (first.id, first.input, first.target) == ("train-0", "Ann: hi 0\nBob: hello", "Ann and Bob greet, take 0.")


def test_directory_holds_one_file_per_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", posts("text", "label"))
    write_csv(tmp_path / "test.csv", posts("text", "label")[:2])
    write_jsonl(tmp_path / "validation.jsonl", posts("text", "label")[2:4])
    data = load_task_data(DataConfig(source=str(tmp_path)))
    assert data.report.rows == {"test": 2, "train": 6, "validation": 2}
    assert data.report.validation_from == "source split 'validation'" and len(data.train) == 6


def test_eval_split_may_name_another_file(tmp_path):
    train = write_jsonl(tmp_path / "mine.jsonl", posts("text", "label"))
    write_jsonl(tmp_path / "held_out.jsonl", posts("text", "label")[:3])
    data = load_task_data(DataConfig(source=str(train), eval_split="held_out.jsonl"))
    assert len(data.test) == 3 and data.report.rows["held_out.jsonl"] == 3


def test_missing_eval_split_names_the_splits_and_validation_fallback(tmp_path):
    """A single file gets its 'test' split carved (tests/data/test_data_single_file.py); any other missing
    name is an error naming the splits there are."""
    path = write_jsonl(tmp_path / "only.jsonl", posts("text", "label") * 2)
    with pytest.raises(UserError, match="no split 'tset' to evaluate on") as err:
        load_task_data(DataConfig(source=str(path), eval_split="tset"))
    assert "validation" in err.value.fix
    data = load_task_data(DataConfig(source=str(path)), eval_split="validation")
    assert data.test == data.validation and data.report.validation_from == "carved from train"


def test_hub_dataset_dict_class_labels_become_names():
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["autos", "space"])})
    train = datasets.Dataset.from_dict({"text": ["engine noise", "orbit insertion", "tire pressure"],
                                        "label": [0, 1, 0]}, features=features)
    raw = splits_from_dataset_dict(datasets.DatasetDict({"train": train}), "org/cars-and-space")
    assert [r["label"] for r in raw["train"].rows] == ["autos", "space", "autos"]
    assert "org/cars-and-space" in raw["train"].origin


def test_unreachable_hub_dataset_names_id_and_local_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load dataset 'rungalileo/20_Newsgroups_Fixed'") as err:
        load_source(DataConfig(source="rungalileo/20_Newsgroups_Fixed"))
    assert "data.source" in err.value.fix and "train.jsonl" in err.value.fix


def test_missing_path_and_unknown_builtin(tmp_path):
    with pytest.raises(UserError, match="data source not found"):
        load_source(DataConfig(source=str(tmp_path / "nope.jsonl")))
    with pytest.raises(UserError, match="did you mean 'builtin:summarization'"):
        load_source(DataConfig(source="builtin:summarisation"))
