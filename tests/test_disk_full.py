"""A full disk on every kind of write gives one clear message and leaves nothing half-written (issue 18, item 5):
results and predictions (write_atomic), results.db (SQLite), safetensors and torch.save files. A 16 MiB tmpfs is
filled for real; the training stage's own test is in tests/train/test_train_faults.py."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from tunebench.diskspace import OutOfSpace, is_out_of_space, space_guard
from tunebench.rundir import write_atomic


def test_write_atomic_on_a_full_disk_keeps_the_old_file(small_disk, fill_disk):
    target = small_disk / "eval" / "predictions.jsonl"
    write_atomic(target, "old\n")
    fill_disk(small_disk)
    with pytest.raises(OutOfSpace) as caught:
        write_atomic(target, "x" * 200_000)
    message = str(caught.value)
    assert f"no space left on {small_disk} while writing {target}" in message
    assert "about 195.3 KiB needed" in message and "bytes free" in message
    assert target.read_text() == "old\n" and sorted(p.name for p in target.parent.iterdir()) == ["predictions.jsonl"]


def test_results_db_on_a_full_disk_keeps_its_last_committed_state(small_disk, fill_disk):
    from tunebench.study.store import Store

    with Store.open(small_disk) as store:
        store.record_study("s", "", None, {})
        filler = fill_disk(small_disk)
        with pytest.raises(OutOfSpace) as caught:
            store.record_study("s", "x" * 4_000_000, None, {"big": "y" * 4_000_000})
        assert "results.db keeps its last committed state" in str(caught.value)
    filler.unlink()
    rows = sqlite3.connect(small_disk / "results.db").execute("SELECT name, description FROM study").fetchall()
    assert rows == [("s", "")]


def test_safetensors_and_torch_save_are_recognised(small_disk, fill_disk):
    from safetensors.torch import save_file

    fill_disk(small_disk)
    tensors = {"w": torch.zeros(1 << 18)}
    partial = small_disk / ".partial"
    for write in (lambda p: save_file(tensors, p / "adapter_model.safetensors"),
                  lambda p: torch.save(tensors, p / "optimizer.pt")):
        with pytest.raises(OutOfSpace), space_guard(partial, partial=partial):
            partial.mkdir(exist_ok=True)
            write(partial)
        assert not partial.exists()


def test_other_errors_pass_through():
    assert not is_out_of_space(RuntimeError("shape mismatch"))
    with pytest.raises(ValueError), space_guard(__import__("pathlib").Path(".")):
        raise ValueError("not a disk problem")


def test_creating_results_db_on_a_full_disk_is_not_called_corrupt(small_disk, fill_disk):
    from tunebench.study.store import Store

    fill_disk(small_disk)
    with pytest.raises(OutOfSpace) as caught:
        Store.open(small_disk)
    assert "results.db" in str(caught.value) and "corrupt" not in str(caught.value)
