"""Your own data in one file: the evaluation split carved from it (stratified, seeded, recorded), relative paths
beside the study file, and a missing path that fails at once instead of being tried on the hub."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tunebench.config.schema import DataConfig
from tunebench.config.study import load_study
from tunebench.data import load_task_data

REPO = Path(__file__).resolve().parents[2]


def reviews(n_per_class: dict[str, int]) -> str:
    lines = ["review,sentiment"]
    for label, n in n_per_class.items():
        lines += [f'"{label} review number {i}, with a few words",{label}' for i in range(n)]
    return "\n".join(lines) + "\n"


def test_a_single_csv_carves_a_stratified_seeded_eval_split(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(reviews({"good": 10, "bad": 10, "meh": 5}))
    cfg = DataConfig(source=str(path), columns={"text": "review", "label": "sentiment"}, eval_size=0.2)
    data = load_task_data(cfg)
    by_label = {label: sum(ex.target == label for ex in data.test) for label in ("good", "bad", "meh")}
    assert by_label == {"good": 2, "bad": 2, "meh": 1}
    ids = {ex.id for ex in data.test}
    assert not ids & {ex.id for ex in data.train + data.validation}   # carved rows are never trained on
    assert len(data.train) + len(data.validation) + len(data.test) == 25
    assert data.report.eval_ids == [ex.id for ex in data.test] and "seed 0" in data.report.eval_from
    # the same seed carves the same rows, whatever the training size; another seed carves others
    assert [ex.id for ex in load_task_data(cfg.model_copy(update={"train_count": 5})).test] == data.report.eval_ids
    other = load_task_data(cfg.model_copy(update={"seed": 1}))
    assert [ex.id for ex in other.test] != data.report.eval_ids


def test_dry_run_fails_when_a_class_is_too_small_to_carve(cli, tmp_path):
    (tmp_path / "r.csv").write_text(reviews({"good": 6, "bad": 6, "rare": 1}))
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndefaults:\n  data: {source: r.csv, columns: {text: review, label: sentiment}}\n"
                     "experiments:\n  - method: zero_shot\n")
    result = cli("run", "--dry-run", str(study), cwd=REPO)   # not the study's folder: r.csv is beside the study
    assert result.returncode == 2, result.stdout
    assert "class 'rare' (1 row)" in result.stderr and "fix:" in result.stderr and "Traceback" not in result.stderr


def test_relative_source_resolves_beside_the_study_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.csv").write_text(reviews({"good": 5, "bad": 5}))
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndefaults:\n  data: {source: data/r.csv, columns: {text: review, label: sentiment}}\n"
                     "experiments:\n  - method: zero_shot\n")
    cell = load_study(study).cells[0]
    assert cell.config.data.source == str(tmp_path / "data" / "r.csv")
    # the cell id is that of the relative path as written: moving the study folder keeps its results
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "data").mkdir()
    (moved / "data" / "r.csv").write_text((tmp_path / "data" / "r.csv").read_text())
    (moved / "s.yaml").write_text(study.read_text())
    assert load_study(moved / "s.yaml").cells[0].id == cell.id


def test_a_missing_path_like_source_fails_at_once_with_the_absolute_path(cli, tmp_path):
    (tmp_path / "data").mkdir()
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndefaults:\n  data: {source: data/reviews}\nexperiments:\n  - method: zero_shot\n")
    start = time.perf_counter()
    result = cli("run", "--dry-run", str(study), cwd=REPO, env={"HF_HUB_OFFLINE": "0"})
    assert result.returncode == 2 and time.perf_counter() - start < 20
    assert f"data source not found: {tmp_path / 'data' / 'reviews'}" in result.stderr
    assert "hub" not in result.stderr.split("fix:")[0]


def test_the_shipped_csv_study_dry_runs(cli):
    result = cli("run", "--dry-run", "--json", str(REPO / "studies" / "reviews.yaml"), cwd="/")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [c["method"] for c in plan["cells"]] == ["zero_shot", "few_shot", "lora"]


def test_data_show_reports_the_carved_split(cli, tmp_path, tiny_llama_dir):
    """`data show` used to say "test 6 (split 'validation')" for a file `run` then refused."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.csv").write_text(reviews({"good": 5, "bad": 5}))
    result = cli("data", "show", "data/r.csv", "--column", "text=review", "--column", "label=sentiment",
                 "--tokenizer", str(tiny_llama_dir), "--rows", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "test 2 (carved from 'train' (0.2 per class, seed 0))" in result.stdout
