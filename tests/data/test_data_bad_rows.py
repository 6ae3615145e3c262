"""Bad rows are dropped and counted by reason; bad files are clear errors naming the file (and line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunebench.config.schema import DataConfig
from tunebench.data import load_source, load_task_data
from tunebench.errors import UserError

GOOD = [{"text": "The pitcher threw a shutout", "label": "baseball"},
        {"text": "Simmer the onions in butter", "label": "cooking"},
        {"text": "The rocket reached orbit", "label": "space"}]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_rows_are_dropped_and_counted_by_reason(tmp_path):
    rows = [*GOOD,
            {"label": "space"},                                  # missing text
            {"text": "   \n ", "label": "space"},                # empty text (after whitespace normalisation)
            {"text": 42, "label": "space"},                      # non-string text
            {"text": "Ball four, take your base", "label": None},  # missing label
            {"text": "Ball four, take your base", "label": ""}]    # empty label
    test_rows = [*GOOD, {"text": "Plant tomatoes after the frost", "label": "gardening"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test_rows))
    data = load_task_data(DataConfig(source=str(tmp_path)))
    assert data.report.dropped == {"missing text": 1, "empty text": 1, "non-string text": 1, "missing label": 1,
                                   "empty label": 1, "label not in label set": 1}
    assert data.report.rows == {"test": 3, "train": 3} and data.labels == ["baseball", "cooking", "space"]


def test_file_empty_after_dropping_is_an_error(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps({"text": "", "label": "a"}),
                                                 json.dumps({"text": "x", "label": 3})])
    with pytest.raises(UserError, match="no usable rows left after dropping bad rows") as err:
        load_source(DataConfig(source=str(path)))
    assert str(path) in err.value.problem and "empty text: 1" in err.value.problem
    assert "non-string label: 1" in err.value.problem


def test_broken_jsonl_line_names_file_and_line(tmp_path):
    lines = [json.dumps(GOOD[0]), json.dumps(GOOD[1]), '{"text": "unterminated', json.dumps(GOOD[2])]
    path = write_lines(tmp_path / "broken.jsonl", lines)
    with pytest.raises(UserError, match=r"broken\.jsonl, line 3: not valid JSON"):
        load_source(DataConfig(source=str(path)))
    write_lines(path, [json.dumps(GOOD[0]), "[1, 2]"])
    with pytest.raises(UserError, match="line 2: a JSON list, not an object"):
        load_source(DataConfig(source=str(path)))


def test_csv_without_the_mapped_column(tmp_path):
    path = write_lines(tmp_path / "posts.csv", ["message,topic", "hello there,greeting", "bye now,farewell"])
    with pytest.raises(UserError, match="no column 'body'") as err:
        load_source(DataConfig(source=str(path), columns={"text": "body", "label": "topic"}))
    assert "data.columns.text" in err.value.problem and "message, topic" in err.value.fix
    with pytest.raises(UserError, match="no column 'text'"):  # unmapped: the default column name is required
        load_source(DataConfig(source=str(path), columns={"label": "topic"}))


def test_label_set_with_one_class(tmp_path):
    path = write_lines(tmp_path / "one.jsonl", [json.dumps({"text": f"post {i}", "label": "space"}) for i in range(4)])
    with pytest.raises(UserError, match="single label 'space'"):
        load_source(DataConfig(source=str(path)))


def test_empty_file_and_unknown_field_mapping(tmp_path):
    path = write_lines(tmp_path / "empty.csv", [""])
    with pytest.raises(UserError, match="has no rows"):
        load_source(DataConfig(source=str(path)))
    with pytest.raises(UserError, match="'dialogue' is not a field of the classification task"):
        load_source(DataConfig(columns={"dialogue": "chat"}))
