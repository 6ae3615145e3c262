"""`tunebench run --dry-run` checks every cell's model and data source (issue 18, item 6): an unknown model or a
missing data file fails there with exit 2, not at run time; a hub id offline is only checked for its form."""

from __future__ import annotations

import pytest

from tunebench.cli import main

STUDY = """name: preflight
defaults:
  model: {name: smollm2-135m-instruct}
  data: {source: "builtin:classification", task: classification}
experiments:
  - name: zs
    method: zero_shot
"""


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY)
    return path


def dry_run(study, capsys, *sets: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as caught:
        main(["run", "--dry-run", str(study), *[a for s in sets for a in ("--set", s)]])
    out = capsys.readouterr()
    return caught.value.code or 0, " ".join((out.out + out.err).split())


def test_unknown_model_fails_the_dry_run(study, cli):
    result = cli("run", "--dry-run", str(study), "--set", "model.name=smollm2-135m-instrct")
    assert result.returncode == 2 and "unknown model preset 'smollm2-135m-instrct'" in result.stderr, result.stderr
    assert "did you mean 'smollm2-135m-instruct'" in " ".join(result.stderr.split())


@pytest.mark.parametrize(("setting", "message"), [
    ("model.name=/no/such/model", "the model directory '/no/such/model' does not exist"),
    ("model.name=a/b/c", "is neither a preset, a local directory nor a hub id"),
    ("data.source=/no/such/data.jsonl", "data source not found: /no/such/data.jsonl"),
    ("data.source=builtin:classifcation", "unknown built-in data set 'builtin:classifcation'"),
])
def test_missing_models_and_data_fail_the_dry_run(study, capsys, setting, message):
    code, said = dry_run(study, capsys, setting)
    assert code == 2 and message in said, said


def test_a_hub_id_offline_is_checked_for_its_form_only(study, capsys, tiny_llama_dir):
    code, said = dry_run(study, capsys, "model.name=some-org/not-cached-model", "data.source=some-org/some-data")
    assert code == 0, said
    assert "model some-org/not-cached-model: a hub id not in the local cache: only its form (org/name)" in said
    assert "data some-org/some-data: a hub dataset id: only its form was checked offline" in said
    code, said = dry_run(study, capsys, f"model.name={tiny_llama_dir}")
    assert code == 0 and "note:" not in said and "checked: every model and data source of the 1 cell(s)" in said
