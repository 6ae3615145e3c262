"""Expanding a study into units of work: shared training runs across epochs, --only, the --yes guard, and the
shipped study files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunebench.config.study import load_study
from tunebench.errors import UserError
from tunebench.study.plan import plan, with_trainers
from tunebench.study.select import check_size, select_cells

REPO = Path(__file__).resolve().parents[2]

ABLATION = """
name: ablation
experiments:
  - sweep: {method: [zero_shot, few_shot], lora.r: [2, 4]}
  - method: lora
    sweep: {lora.r: [2, 4], training.epochs: [1, 3, 5]}
  - method: lora
    lora: {r: 2}
    data: {train_fraction: 0.5}
    training: {epochs: 3}
"""


def study_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_cells_differing_only_in_epochs_share_one_training_run(tmp_path):
    study = load_study(study_file(tmp_path, ABLATION))
    units = plan(study.cells)
    prompting = [u for u in units if u.trainer is None]
    trained = [u for u in units if u.trainer is not None]
    # zero/few-shot ignore lora.r: two evaluations, not four
    assert sorted(c.config.method for u in prompting for c in u.cells) == ["few_shot", "zero_shot"]
    # r=2 and r=4 each train once for 5 epochs; the 0.5-fraction cell trains alone
    assert len(trained) == 3
    shared = [u for u in trained if u.epoch_of]
    assert len(shared) == 2
    for unit in shared:
        assert unit.trainer.config.training.epochs == 5
        assert sorted(unit.epoch_of.values()) == [1, 3]
        assert unit.cells[0] is unit.trainer
        assert {c.config.lora.r for c in unit.cells} == {unit.trainer.config.lora.r}
    alone = next(u for u in trained if not u.epoch_of)
    assert alone.trainer.config.data.train_fraction == 0.5 and alone.cells == [alone.trainer]
    assert sum(len(u.cells) for u in units) == len(study.cells) == 2 + 6 + 1


def test_only_selects_cells_and_keeps_the_training_run_they_need(tmp_path):
    study = load_study(study_file(tmp_path, ABLATION))
    chosen = select_cells(study.cells, "method=lora,lora.r=2,training.epochs=1")
    assert [c.config.training.epochs for c in chosen] == [1]
    units = with_trainers(chosen, study.cells)
    assert len(units) == 1 and units[0].trainer.config.training.epochs == 5
    assert units[0].cells == chosen and list(units[0].epoch_of.values()) == [1]
    assert {c.config.method for c in select_cells(study.cells, "method=zero-shot|few_shot")} == {"zero_shot",
                                                                                                 "few_shot"}
    prefix = study.cells[0].id[:-4]
    assert study.cells[0] in select_cells(study.cells, prefix)
    assert len(select_cells(study.cells, "task=classification,fraction=0.5")) == 1


@pytest.mark.parametrize("expr, message", [("lora.rank=2", "unknown field"), ("method=lora,seed=7", "matches none"),
                                           ("no-such-cell", "matches none")])
def test_only_errors_name_the_problem(tmp_path, expr, message):
    study = load_study(study_file(tmp_path, ABLATION))
    with pytest.raises(UserError) as err:
        select_cells(study.cells, expr)
    assert message in err.value.problem and err.value.fix


def test_more_than_50_cells_need_yes(tmp_path):
    grid = "{lora.r: [1, 2, 3, 4, 5, 6, 7, 8, 9], lora.alpha: [1, 2, 3, 4, 5, 6]}"
    study = load_study(study_file(tmp_path, f"name: big\nexperiments:\n  - method: lora\n    sweep: {grid}\n"))
    assert len(study.cells) == 54
    with pytest.raises(UserError, match="54 cells"):
        check_size(study.cells, False, study)
    check_size(study.cells, True, study)


def test_an_empty_grid_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"no cells|non-empty list"):
        load_study(study_file(tmp_path, "name: empty\nexperiments:\n  - method: lora\n    sweep: {lora.r: []}\n"))


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_study_validates(path):
    study = load_study(path)
    assert study.cells and plan(study.cells)


def test_the_original_study_is_shipped_at_full_size():
    cells = [c for p in sorted((REPO / "studies").glob("original-*.yaml")) for c in load_study(p).cells]
    models = {c.config.model.name for c in cells}
    assert {"redpajama-3b", "redpajama-7b", "distilbert", "bert-base", "flan-t5-large", "falcon-7b"} <= models
    fractions = {c.config.data.train_fraction for c in cells if c.config.method != "zero_shot"}
    assert {0.025, 0.05, 0.1, 0.25, 0.5} <= fractions
    ablation = {(c.config.lora.r, c.config.lora.dropout) for c in cells if c.config.training.epochs == 50}
    assert ablation == {(r, d) for r in (2, 4, 8, 16) for d in (0.1, 0.2, 0.5)}
    assert {c.config.data.source for c in cells} == {"rungalileo/20_Newsgroups_Fixed", "samsum"}
    assert {c.config.method for c in cells} == {"zero_shot", "few_shot", "qlora", "lora", "full"}


def test_dry_run_shows_the_shared_work(cli, tmp_path):
    result = cli("run", "--dry-run", str(study_file(tmp_path, ABLATION)))
    assert result.returncode == 0, result.stderr
    assert "9 cell(s): 3 training run(s), 9 evaluation(s)" in " ".join(result.stdout.split())
    assert "trains 5 epochs" in result.stdout
