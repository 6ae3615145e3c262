"""Study-file schema, sweep/zip expansion, de-duplication, and every error message."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench.config.study import load_study
from tunebench.errors import UserError

ORIGINAL_SHAPE = """
name: shape
defaults:
  model: {name: redpajama-3b}
  data: {source: builtin:classification, task: classification}
experiments:
  - name: prompting
    sweep: {method: [zero_shot, few_shot]}
    zip:
      data.task: [classification, summarization]
      data.source: [builtin:classification, builtin:summarization]
  - name: fractions
    method: qlora
    sweep: {data.train_fraction: [0.25, 0.5, 1.0]}
  - name: ablation
    method: qlora
    sweep: {lora.r: [2, 8], lora.dropout: [0.1, 0.5]}
"""


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sweep_zip_product_and_dedup(tmp_path):
    study = load_study(write(tmp_path, ORIGINAL_SHAPE))
    methods = [c.config.method for c in study.cells]
    # prompting: 2 methods x 2 zipped tasks = 4; fractions 3; ablation 4, one of which (r=8, dropout=0.1,
    # fraction None) is a new cell while fraction=1.0 differs from fraction None -> 3 + 4.
    assert methods.count("zero_shot") == 2 and methods.count("few_shot") == 2
    assert len(study.cells) == 4 + 3 + 4
    tasks = {(c.config.method, c.config.data.task, c.config.data.source) for c in study.cells[:4]}
    assert ("zero_shot", "summarization", "builtin:summarization") in tasks
    assert ("zero_shot", "summarization", "builtin:classification") not in tasks


def test_prompting_cells_ignore_lora_and_fraction(tmp_path):
    text = """
name: dedup
experiments:
  - method: zero_shot
    sweep: {lora.r: [2, 4, 8], data.train_fraction: [0.1, 0.5]}
  - method: lora
    sweep: {lora.r: [2, 4]}
  - method: lora
    lora: {r: 4}
"""
    study = load_study(write(tmp_path, text))
    assert [c.config.method for c in study.cells] == ["zero_shot", "lora", "lora"]
    assert study.cells[2].experiments == ["experiments[1]", "experiments[2]"]


def test_cell_ids_are_stable_and_readable(tmp_path):
    a = load_study(write(tmp_path, ORIGINAL_SHAPE, "a.yaml"))
    b = load_study(write(tmp_path, ORIGINAL_SHAPE, "b.yaml"))
    assert [c.id for c in a.cells] == [c.id for c in b.cells]
    assert a.cells[0].id.startswith("redpajama-3b-cls-zeroshot-")
    assert len({c.id for c in a.cells}) == len(a.cells)


def test_set_overrides_every_cell(tmp_path):
    study = load_study(write(tmp_path, ORIGINAL_SHAPE), ["model.name=redpajama-7b", "name=renamed"])
    assert study.name == "renamed"
    assert {c.config.model.name for c in study.cells} == {"redpajama-7b"}


def test_dotted_keys_in_experiments_and_passthrough_dicts(tmp_path):
    text = """
name: dotted
experiments:
  - method: lora
    lora.r: 16
    lora: {options: {use_dora: true}}
    data: {columns: {text: body}}
"""
    cell = load_study(write(tmp_path, text)).cells[0]
    assert cell.config.lora.r == 16 and cell.config.lora.options == {"use_dora": True}
    assert cell.config.data.columns == {"text": "body"}


@pytest.mark.parametrize(
    ("text", "problem", "fix"),
    [
        ("name: x\nexperiments:\n  - data: {sorce: a}\n", "unknown key 'data.sorce'", "did you mean 'source'"),
        ("name: x\ndefaults: {lora: {rank: 4}}\n", "unknown key 'lora.rank'", "allowed:"),
        ("name: x\nexperiments:\n  - method: lora\n    lora: {r: many}\n", "lora.r = 'many'", "lora.r"),
        ("name: x\nexperiments:\n  - method: finetune\n", "method = 'finetune' is not allowed", "'zero_shot'"),
        ("name: x\nexperiments:\n  - sweep: {name: [a, b]}\n", "study-level field", "sweep cell fields"),
        ("name: x\nexperiments:\n  - sweep: {lora: [1, 2]}\n", "is a section", "lora.r"),
        ("name: x\nexperiments:\n  - sweep: {lora.rr: [1, 2]}\n", "unknown field 'lora.rr'", "lora.r"),
        ("name: x\nexperiments:\n  - sweep: {lora.r: []}\n", "non-empty list", "lora.r: [value1"),
        ("name: x\nexperiments:\n  - zip: {lora.r: [1, 2], lora.alpha: [1]}\n", "different lengths",
         "same number"),
        ("name: x\nexperiments:\n  - data: {train_fraction: 1.5}\n", "train_fraction = 1.5", "train_fraction"),
        ("experiments: []\n", "required field 'name'", "add 'name"),
        ("name: x\nexperiments: []\n", "expands to no cells", "add at least one"),
        ("- just\n- a list\n", "must be a mapping", "studies/demo.yaml"),
        ("name: x\n  bad: [indent\n", "malformed YAML at line", "fix the YAML"),
    ],
)
def test_bad_study_files(tmp_path, text, problem, fix):
    with pytest.raises(UserError) as info:
        load_study(write(tmp_path, text))
    assert problem in info.value.problem
    assert fix in (info.value.fix or "")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("sets", "problem"),
    [(["lora.rr=4"], "unknown field 'lora.rr'"), (["lora.r.x=4"], "is a value"), (["noequals"], "not of the form"),
     (["=4"], "not of the form")],
)
def test_bad_set(tmp_path, sets, problem):
    with pytest.raises(UserError, match=problem):
        load_study(write(tmp_path, ORIGINAL_SHAPE), sets)


def test_every_shipped_study_validates():
    studies = sorted(Path(__file__).resolve().parents[2].joinpath("studies").glob("*.yaml"))
    assert studies, "no study files shipped"
    for path in studies:
        assert load_study(path).cells, path
