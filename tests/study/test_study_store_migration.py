"""Schema version 3 (the inference table's engine columns): an older store stays readable and is upgraded in
place when written; a store from a newer tunebench is refused with a clear message."""

from __future__ import annotations

import sqlite3

import pytest

from tunebench.errors import UserError
from tunebench.study.store import INFERENCE_ADDED, SCHEMA_VERSION, Store

NEW_COLUMNS = [name for name, _ in INFERENCE_ADDED]


def older_store(study_dir, version: str):
    """A store as an older tunebench wrote it: version 2 without the engine columns, 1 also without stages.node
    and stages.gpus."""
    Store.open(study_dir).close()
    conn = sqlite3.connect(study_dir / "results.db")
    for column in NEW_COLUMNS:
        conn.execute(f"ALTER TABLE inference DROP COLUMN {column}")
    if version == "1":
        conn.execute("ALTER TABLE stages DROP COLUMN node")
        conn.execute("ALTER TABLE stages DROP COLUMN gpus")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    conn.execute("INSERT INTO cells (cell_id, model, method, task, experiments, params, added) "
                 "VALUES ('c1', 'm', 'lora', 'classification', '[]', '{}', 'now')")
    conn.execute("INSERT INTO inference (cell_id, engine, max_rps) VALUES ('c1', 'batched', 4.0)")
    conn.commit()
    conn.close()


def columns(study_dir) -> set[str]:
    conn = sqlite3.connect(study_dir / "results.db")
    try:
        return {row[1] for row in conn.execute("PRAGMA table_info(inference)")}
    finally:
        conn.close()


@pytest.mark.parametrize("version", ["1", "2"])
def test_an_older_store_is_read_as_is_and_upgraded_when_written(tmp_path, version):
    older_store(tmp_path, version)
    with Store.open_readonly(tmp_path) as store:  # the report reads it without changing it
        (row,) = store.rows("SELECT * FROM inference")
        assert row["max_rps"] == 4.0 and row.get("engine_version") is None
    assert not set(NEW_COLUMNS) & columns(tmp_path)
    with Store.open(tmp_path) as store:
        assert store.version() == SCHEMA_VERSION == "3"
        store.stage_done("c1", "loadtest", seconds=1.0, metrics=[], inference=[
            {"engine": "vllm", "max_rps": 8.0, "engine_version": "0.11.0", "engine_command": "vllm serve m"}])
        (row,) = store.rows("SELECT * FROM inference")
    assert set(NEW_COLUMNS) <= columns(tmp_path)
    assert row["engine"] == "vllm" and row["engine_version"] == "0.11.0" and row["served"] is None


def test_a_store_from_a_newer_tunebench_is_refused_plainly(tmp_path):
    Store.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "results.db")
    conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(UserError) as err:
        Store.open_readonly(tmp_path)
    assert "newer tunebench" in err.value.problem and "upgrade tunebench" in err.value.fix
