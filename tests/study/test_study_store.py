"""The results store: schema readable with plain sqlite3, transactions, corrupted files, the study lock, and
a study directory that cannot be written."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from tinystudy import write_study

from tunebench.errors import UserError
from tunebench.study.lock import StudyLock
from tunebench.study.store import TABLES, Metric, Store

STUDY = "name: locked\nexperiments:\n  - method: zero_shot\n"


def new_store(tmp_path: Path) -> Store:
    store = Store.open(tmp_path)
    store.record_study("s", "", None, {})
    store.record_cells([{"cell_id": "c1", "model": "m", "method": "lora", "task": "classification",
                         "fraction": 0.5, "count": None, "lora_r": 8, "lora_alpha": 32.0, "lora_dropout": 0.1,
                         "epochs": 2, "seed": 0, "train_run": "c1", "epoch": None, "experiments": "[]",
                         "params": "{}"}], {"c1": ["train", "eval"]})
    return store


def test_schema_is_plain_sqlite(tmp_path):
    new_store(tmp_path).close()
    db = tmp_path / "results.db"
    if shutil.which("sqlite3"):
        out = subprocess.run(["sqlite3", str(db), ".tables"], capture_output=True, text=True, check=True).stdout
        names = set(out.split())
    else:
        with sqlite3.connect(db) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(TABLES) <= names
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"cells_by_task_model_method", "cells_by_lora", "cells_by_epochs"} <= indexes
        row = conn.execute("SELECT model, method, fraction, lora_r, epochs FROM cells").fetchone()
        assert row == ("m", "lora", 0.5, 8, 2)
        assert conn.execute("SELECT status FROM stages WHERE stage = 'train'").fetchone()[0] == "pending"


def test_a_stage_is_recorded_whole_or_not_at_all(tmp_path):
    store = new_store(tmp_path)
    store.stage_started("c1", "eval")
    duplicate = [Metric("accuracy", 0.5, 0.4, 0.6, 10), Metric("accuracy", 0.7)]
    with pytest.raises(sqlite3.IntegrityError):
        store.stage_done("c1", "eval", seconds=1.0, metrics=duplicate)
    assert store.rows("SELECT * FROM metrics") == []
    assert store.stage("c1", "eval").status == "running"
    store.stage_done("c1", "eval", seconds=1.0, metrics=duplicate[:1])
    assert store.stage("c1", "eval").status == "done"
    assert store.rows("SELECT name, value, ci_low, ci_high, n FROM metrics") == [
        {"name": "accuracy", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10}]


@pytest.mark.parametrize("content", [b"this is not a database" * 100, None], ids=["garbage", "foreign-sqlite"])
def test_a_corrupted_store_is_refused_and_left_alone(tmp_path, cli, content):
    study_dir = tmp_path / "runs"
    study_dir.mkdir()
    db = study_dir / "results.db"
    if content is None:
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE other (x)")
    else:
        db.write_bytes(content)
    before = db.read_bytes()
    with pytest.raises(UserError) as err:
        Store.open(study_dir)
    assert "results store" in err.value.problem and f"mv {db}" in err.value.fix
    result = cli("run", str(write_study(tmp_path, STUDY)), "--out", str(study_dir))
    assert result.returncode == 2 and "cannot be used as a results store" in result.stderr, result.stderr
    assert "move it aside" in result.stderr and "Traceback" not in result.stderr
    report = cli("report", str(study_dir))
    assert report.returncode == 2 and "move it aside" in report.stderr
    assert db.read_bytes() == before
    assert sorted(p.name for p in study_dir.iterdir() if not p.name.startswith(".")) == ["results.db"]


def test_a_second_runner_is_refused(tmp_path, cli):
    study_dir = tmp_path / "runs"
    study_dir.mkdir()
    with StudyLock(study_dir):
        result = cli("run", str(write_study(tmp_path, STUDY)), "--out", str(study_dir))
    assert result.returncode == 2, result.stderr
    assert "already being run by another tunebench process" in result.stderr
    assert f"pid {os.getpid()}" in result.stderr and "fix:" in result.stderr
    assert not (study_dir / "results.db").exists()


def test_a_read_only_study_directory_fails_before_any_work(tmp_path, cli):
    if os.geteuid() != 0:
        target = tmp_path / "readonly"
        target.mkdir()
        target.chmod(0o555)
        out = target / "study"
    else:  # root ignores permission bits; sysfs refuses to create anything, even for root
        out = Path("/sys/tunebench-study-test")
    result = cli("run", str(write_study(tmp_path, STUDY)), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "cannot write to the study directory" in result.stderr and "--out" in result.stderr
    assert not out.exists()


def test_gpus_that_do_not_exist_are_refused_before_any_work(tmp_path, cli):
    import torch

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    out = tmp_path / "runs"
    result = cli("run", str(write_study(tmp_path, STUDY)), "--out", str(out), "--gpus", "0,7")
    assert result.returncode == 2 and "none with index" in result.stderr and "fix:" in result.stderr
    assert not out.exists()
    bad = cli("run", str(write_study(tmp_path, STUDY)), "--gpus", "0,0")
    assert bad.returncode == 2 and "distinct GPU indices" in bad.stderr


def test_a_study_directory_belongs_to_one_study(tmp_path, cli):
    out = tmp_path / "runs"
    out.mkdir()
    with Store.open(out) as store:
        store.record_study("other", "", None, {})
    result = cli("run", str(write_study(tmp_path, STUDY)), "--out", str(out))
    assert result.returncode == 2 and "holds the results of study 'other', not 'locked'" in result.stderr
