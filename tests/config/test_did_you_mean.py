"""A misspelt or borrowed key gets the closest valid one suggested (the README's `lora.rank` -> `r`)."""

from __future__ import annotations

import pytest

from tunebench.config.study import load_study
from tunebench.errors import UserError, closest


@pytest.mark.parametrize(("experiment", "guess"), [
    ("lora: {rank: 4}", "did you mean 'r'?"),
    ("training: {lr: 0.001}", "did you mean 'learning_rate'?"),
    ("lorra: {r: 4}", "did you mean 'lora'?"),
    ("method: lorra", "did you mean 'lora'?"),
])
def test_the_closest_key_is_suggested(tmp_path, experiment, guess):
    study = tmp_path / "s.yaml"
    study.write_text(f"name: s\nexperiments:\n  - {experiment}\n")
    with pytest.raises(UserError) as err:
        load_study(study)
    assert err.value.fix.startswith(guess), err.value.fix


def test_set_suggests_the_full_dotted_key(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text("name: s\nexperiments:\n  - method: lora\n")
    with pytest.raises(UserError, match=r"unknown field 'training\.lr'") as err:
        load_study(study, ["training.lr=0.01"])
    assert err.value.fix.startswith("did you mean 'training.learning_rate'?")


def test_no_guess_when_nothing_is_close():
    assert closest("zzz", ["r", "alpha", "dropout"]) is None
    assert closest("lr", ["learning_rate", "lr_scheduler"]) == "learning_rate"
