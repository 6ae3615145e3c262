"""Bad study input blamed on where it came from (issue 18, item 6): a non-UTF-8 file names its byte offset, and
a bad `--set` value names the --set flag (every field of the schema, each type), not the study's experiment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from tunebench.config.schema import CellConfig
from tunebench.config.study import load_study
from tunebench.errors import UserError

STUDY = """name: blame
defaults:
  model: {name: smollm2-135m-instruct}
  data: {source: "builtin:classification", task: classification}
experiments:
  - name: lora-cell
    method: lora
"""
# Tried in order until the field refuses one: a word, a mapping, a nested list.
BAD_VALUES = ("not-a-valid-value-xyz", "{a: {b: 1}}", "[[1, 2]]")


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field.annotation))
    return out


def test_a_bad_set_value_is_blamed_on_the_set_flag_for_every_field(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    fields = leaf_fields(CellConfig)
    kinds = {str(annotation) for _, annotation in fields}
    assert len(fields) > 60 and {"<class 'int'>", "<class 'float'>", "<class 'bool'>", "<class 'str'>"} <= kinds
    unblamed = []
    for path, annotation in fields:
        for bad in BAD_VALUES:
            try:
                load_study(study, [f"{path}={bad}"])
            except UserError as err:
                if not err.problem.startswith(f"--set {path}=") or "lora-cell" in err.problem:
                    unblamed.append((path, err.problem))
                elif "valid value" not in (err.fix or "") and "allowed" not in (err.fix or ""):
                    unblamed.append((path, f"fix: {err.fix}"))
                break
        else:
            unblamed.append((path, f"{annotation} accepted every bad value"))
    assert not unblamed, unblamed


def test_a_bad_value_in_the_file_is_still_blamed_on_the_experiment(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.replace("method: lora", "method: lora\n    lora: {r: abc}"))
    with pytest.raises(UserError, match=r"experiments\[0\] \(lora-cell\): lora.r = 'abc'"):
        load_study(study, ["training.epochs=2"])


def test_a_non_utf8_study_file_names_the_byte_offset(tmp_path, cli):
    study = tmp_path / "latin1.yaml"
    study.write_bytes(STUDY.replace("name: blame", "name: caf\xe9").encode("latin-1"))
    result = cli("run", "--dry-run", str(study))
    said = " ".join(result.stderr.split())
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{study}: not UTF-8 text: byte 0xe9 at byte offset 9 (line 1, byte 10 of the line)" in said, said
    assert "save the file as UTF-8" in said
    assert Path(study).exists()
