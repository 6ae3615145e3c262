"""The results store: one SQLite file per study, `runs/<study>/results.db`, readable with plain `sqlite3`.

Every write is one short transaction (`BEGIN IMMEDIATE`, WAL journal), so a runner killed at any moment
leaves the file consistent: a stage is either recorded done with all its metrics, costs and artifacts, or
not at all. A file that SQLite cannot read, or that is not a tunebench store, is never recreated silently:
opening it raises a `UserError` saying how to move it aside (every finished cell's results are also in its
own json files, and the runner records them again from there).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunebench.errors import UserError

DB_NAME = "results.db"
SCHEMA_VERSION = "3"
# Version 1 lacks stages.node and stages.gpus; version 2 lacks the inference table's engine columns (issue 22).
# Both are read as they are (readers use .get) and upgraded in place, columns added and nothing removed, the
# first time a command opens the store to write. A newer version is refused: upgrade tunebench to read it.
READABLE_VERSIONS = ("1", "2", "3")
INFERENCE_ADDED = (("engine_version", "TEXT"), ("engine_command", "TEXT"), ("served", "TEXT"), ("adapters", "INTEGER"),
                   ("output_tokens_per_s", "REAL"), ("ttft_p90_s", "REAL"), ("pricing", "TEXT"))
STAGE_NAMES = ("train", "eval", "loadtest")
STATUSES = ("pending", "running", "done", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS study (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    study_file  TEXT,
    config      TEXT NOT NULL,              -- the study file as JSON
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    cell_id      TEXT PRIMARY KEY,
    model        TEXT NOT NULL,
    method       TEXT NOT NULL,             -- zero_shot | few_shot | lora | qlora | full
    task         TEXT NOT NULL,             -- classification | summarization
    fraction     REAL,                      -- data.train_fraction (trained cells)
    count        INTEGER,                   -- data.train_count (trained cells)
    lora_r       INTEGER,
    lora_alpha   REAL,
    lora_dropout REAL,
    epochs       INTEGER,
    seed         INTEGER,                   -- data.seed
    train_run    TEXT,                      -- the cell whose training run this cell uses (itself or its epochs group)
    epoch        INTEGER,                   -- the checkpoint epoch it evaluates when it shares a training run
    experiments  TEXT NOT NULL,             -- JSON list of the experiments that produced the cell
    params       TEXT NOT NULL,             -- the full resolved CellConfig as JSON
    in_study     INTEGER NOT NULL DEFAULT 1, -- 1 when the study file, as last run, still has this cell
    added        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cells_by_task_model_method ON cells (task, model, method);
CREATE INDEX IF NOT EXISTS cells_by_fraction ON cells (fraction);
CREATE INDEX IF NOT EXISTS cells_by_lora ON cells (lora_r, lora_alpha, lora_dropout);
CREATE INDEX IF NOT EXISTS cells_by_epochs ON cells (epochs);
CREATE INDEX IF NOT EXISTS cells_by_seed ON cells (seed);
CREATE TABLE IF NOT EXISTS stages (
    cell_id  TEXT NOT NULL REFERENCES cells (cell_id),
    stage    TEXT NOT NULL CHECK (stage IN ('train', 'eval', 'loadtest')),
    status   TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,    -- times the stage was started
    started  TEXT,
    finished TEXT,
    seconds  REAL,                          -- wall time of the last attempt
    error    TEXT,                          -- why it failed
    detail   TEXT,                          -- e.g. 'epoch 2 checkpoint of <cell>'
    pid      INTEGER,                       -- the process that ran it
    node     TEXT,                          -- where it ran: host (and IP) of the node
    gpus     TEXT,                          -- the GPUs its executor assigned (CUDA_VISIBLE_DEVICES)
    PRIMARY KEY (cell_id, stage)
);
CREATE TABLE IF NOT EXISTS metrics (
    cell_id TEXT NOT NULL REFERENCES cells (cell_id),
    stage   TEXT NOT NULL,
    name    TEXT NOT NULL,                  -- accuracy, macro_f1, rouge1, prompt_tokens_mean, ...
    value   REAL,
    ci_low  REAL,                           -- 95% confidence interval, when known
    ci_high REAL,
    n       INTEGER,                        -- examples behind the number
    PRIMARY KEY (cell_id, stage, name)
);
CREATE TABLE IF NOT EXISTS costs (
    cell_id           TEXT NOT NULL REFERENCES cells (cell_id),
    stage             TEXT NOT NULL,
    wall_seconds      REAL NOT NULL,
    device            TEXT,
    instance          TEXT,                 -- price-table entry, or 'custom'
    price_per_hour    REAL,
    usd               REAL,                 -- wall_seconds / 3600 * price_per_hour
    tokens            INTEGER,              -- tokens processed
    tokens_per_second REAL,
    note              TEXT,                 -- e.g. 'share of a training run'
    PRIMARY KEY (cell_id, stage)
);
CREATE TABLE IF NOT EXISTS artifacts (
    cell_id TEXT NOT NULL REFERENCES cells (cell_id),
    stage   TEXT NOT NULL,
    kind    TEXT NOT NULL,                  -- adapter, summary, metrics, predictions, loadtest ...
    path    TEXT NOT NULL,                  -- relative to the study directory
    PRIMARY KEY (cell_id, stage, kind)
);
CREATE TABLE IF NOT EXISTS provenance (
    cell_id   TEXT PRIMARY KEY REFERENCES cells (cell_id),
    device    TEXT,
    git_sha   TEXT,
    data_hash TEXT,
    python    TEXT,
    packages  TEXT,                         -- JSON {package: version}
    recorded  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inference (
    cell_id             TEXT NOT NULL REFERENCES cells (cell_id),
    engine              TEXT NOT NULL,      -- naive | batched | an external server
    max_rps             REAL,               -- max sustainable request rate
    throughput_rps      REAL,               -- achieved successful requests/s there
    p90_s               REAL,
    tokens_per_request  REAL,               -- mean input + output tokens
    price_per_hour      REAL,
    instance            TEXT,
    usd_per_1k_tokens   REAL,
    usd_per_1k_requests REAL,
    result              TEXT,               -- path of loadtest.json, relative to the study directory
    engine_version      TEXT,               -- 'tunebench 0.1.0', vLLM's or SGLang's version (schema 3)
    engine_command      TEXT,               -- the command line that started the server (API keys: REDACTED)
    served              TEXT,               -- base | merged | adapters (LoRA unmerged)
    adapters            INTEGER,            -- LoRA adapters the server held
    output_tokens_per_s REAL,               -- at the max sustainable rate
    ttft_p90_s          REAL,               -- time to first token, when the load test streamed
    pricing             TEXT,               -- 'per hour' (the server's hourly price) or 'per token' (a hosted API)
    PRIMARY KEY (cell_id, engine)
);
"""
INFERENCE_COLUMNS = ("engine", "max_rps", "throughput_rps", "p90_s", "tokens_per_request", "price_per_hour",
                     "instance", "usd_per_1k_tokens", "usd_per_1k_requests", "result",
                     *(name for name, _ in INFERENCE_ADDED))
TABLES = ("meta", "study", "cells", "stages", "metrics", "costs", "artifacts", "provenance", "inference")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Metric:
    name: str
    value: float | None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None


@dataclass(frozen=True)
class Cost:
    wall_seconds: float
    device: str | None = None
    instance: str | None = None
    price_per_hour: float | None = None
    usd: float | None = None
    tokens: int | None = None
    tokens_per_second: float | None = None
    note: str | None = None


@dataclass(frozen=True)
class StageRow:
    cell_id: str
    stage: str
    status: str
    attempts: int
    error: str | None
    detail: str | None


def corrupt_error(path: Path, why: str) -> UserError:
    return UserError(
        f"{path} cannot be used as a results store: {why}",
        f"move it aside (mv {path} {path}.bad) and run the same command again; finished cells are recorded "
        "again from their own json files, and nothing else is lost",
    )


class Store:
    """A connection to one study's results.db."""

    def __init__(self, conn: sqlite3.Connection, path: Path, study_dir: Path) -> None:
        self.conn = conn
        self.path = path
        self.study_dir = study_dir

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, study_dir: Path) -> Store:
        """Open (creating when absent) the store of a study the caller is about to write."""
        path = Path(study_dir) / DB_NAME
        existed = path.exists() and path.stat().st_size > 0
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        store = cls(conn, path, Path(study_dir))
        try:
            if existed:
                store.check()
                store.migrate()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            if not existed:
                with store.transaction():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        except sqlite3.DatabaseError as err:
            conn.close()
            from tunebench.diskspace import OutOfSpace, is_out_of_space

            if is_out_of_space(err, path):  # a full disk is not a corrupted store
                raise OutOfSpace(path, None, "results.db keeps its last committed state") from None
            raise corrupt_error(path, str(err)) from None
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def open_readonly(cls, study_dir: Path) -> Store:
        path = Path(study_dir) / DB_NAME
        if not path.exists():
            raise UserError(f"no results store in {study_dir} (no {DB_NAME})",
                            "give the directory a study ran in (runs/<study-name>), or run the study first "
                            "with 'tunebench run STUDY.yaml'")
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        conn.row_factory = sqlite3.Row
        store = cls(conn, path, Path(study_dir))
        try:
            store.check()
        except sqlite3.DatabaseError as err:
            conn.close()
            from tunebench.diskspace import OutOfSpace, is_out_of_space

            if is_out_of_space(err, path):  # a full disk is not a corrupted store
                raise OutOfSpace(path, None, "results.db keeps its last committed state") from None
            raise corrupt_error(path, str(err)) from None
        except BaseException:
            conn.close()
            raise
        return store

    def check(self) -> None:
        """Refuse a file SQLite cannot read, or a database that is not a tunebench store."""
        result = self.conn.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise corrupt_error(self.path, f"SQLite integrity check failed ({result})")
        names = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [t for t in TABLES if t not in names]
        if missing:
            raise corrupt_error(self.path, f"not a tunebench results store (tables missing: {', '.join(missing)})")
        found = self.version()
        if found not in READABLE_VERSIONS:
            if found.isdigit() and int(found) > int(SCHEMA_VERSION):
                raise UserError(f"{self.path} was written by a newer tunebench (schema version {found}; this one "
                                f"reads {', '.join(READABLE_VERSIONS)})",
                                "upgrade tunebench (pip install -U tunebench) to read or extend this study")
            raise corrupt_error(self.path, f"schema version {found}, this tunebench reads "
                                f"{', '.join(READABLE_VERSIONS)}")

    def version(self) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return row[0] if row else "none"

    def migrate(self) -> None:
        """Bring an older store up to this schema in place (columns added, nothing removed)."""
        if self.version() == SCHEMA_VERSION:
            return
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(stages)")}
        engine_columns = {row[1] for row in self.conn.execute("PRAGMA table_info(inference)")}
        with self.transaction() as tx:
            for name in ("node", "gpus"):
                if name not in columns:
                    tx.execute(f"ALTER TABLE stages ADD COLUMN {name} TEXT")
            for name, kind in INFERENCE_ADDED:
                if name not in engine_columns:
                    tx.execute(f"ALTER TABLE inference ADD COLUMN {name} {kind}")
            tx.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        from tunebench.diskspace import OutOfSpace, is_out_of_space

        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                with suppress(sqlite3.Error):  # SQLite may have rolled back already (a full disk does)
                    self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as err:
            if not is_out_of_space(err, self.path):
                raise
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise OutOfSpace(self.path, None, "results.db keeps its last committed state",
                             "run the same command again: finished stages are kept") from None

    # ------------------------------------------------------------ the study and its cells

    def record_study(self, name: str, description: str, study_file: str | None, config: dict[str, Any]) -> None:
        row = self.conn.execute("SELECT name FROM study WHERE id = 1").fetchone()
        if row and row["name"] != name:
            raise UserError(
                f"{self.study_dir} holds the results of study '{row['name']}', not '{name}'",
                "give this study its own directory with --out, or rename it in the study file",
            )
        stamp = now()
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO study (id, name, description, study_file, config, created, updated) "
                "VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET description = excluded.description, "
                "study_file = excluded.study_file, config = excluded.config, updated = excluded.updated",
                (name, description, study_file, json.dumps(config, default=str), stamp, stamp),
            )

    def record_cells(self, rows: list[dict[str, Any]], stages: dict[str, list[str]]) -> None:
        """Insert or refresh cells (axes, params) and add a pending row for every stage not yet known."""
        stamp = now()
        with self.transaction() as tx:
            for row in rows:
                tx.execute(
                    "INSERT INTO cells (cell_id, model, method, task, fraction, count, lora_r, lora_alpha, "
                    "lora_dropout, epochs, seed, train_run, epoch, experiments, params, added) "
                    "VALUES (:cell_id, :model, :method, :task, :fraction, :count, :lora_r, :lora_alpha, "
                    ":lora_dropout, :epochs, :seed, :train_run, :epoch, :experiments, :params, :added) "
                    "ON CONFLICT (cell_id) DO UPDATE SET train_run = excluded.train_run, epoch = excluded.epoch, "
                    "experiments = excluded.experiments, params = excluded.params",
                    {**row, "added": stamp},
                )
                for stage in stages[row["cell_id"]]:
                    tx.execute("INSERT OR IGNORE INTO stages (cell_id, stage, status) VALUES (?, ?, 'pending')",
                               (row["cell_id"], stage))

    def mark_current(self, cell_ids: list[str]) -> None:
        """Flag the cells of the study file as last run; results of cells since removed from it are kept."""
        with self.transaction() as tx:
            tx.execute("UPDATE cells SET in_study = 0")
            tx.executemany("UPDATE cells SET in_study = 1 WHERE cell_id = ?", [(cid,) for cid in cell_ids])

    # ------------------------------------------------------------ stage status

    def stage(self, cell_id: str, stage: str) -> StageRow | None:
        row = self.conn.execute(
            "SELECT cell_id, stage, status, attempts, error, detail FROM stages WHERE cell_id = ? AND stage = ?",
            (cell_id, stage),
        ).fetchone()
        return StageRow(**dict(row)) if row else None

    def stage_started(self, cell_id: str, stage: str, *, node: str | None = None, gpus: str | None = None,
                      pid: int | None = None) -> None:
        with self.transaction() as tx:
            tx.execute(
                "UPDATE stages SET status = 'running', attempts = attempts + 1, started = ?, finished = NULL, "
                "seconds = NULL, error = NULL, pid = ?, node = ?, gpus = ? WHERE cell_id = ? AND stage = ?",
                (now(), pid or os.getpid(), node, gpus, cell_id, stage),
            )

    def stage_pending(self, cell_id: str, stage: str, why: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE stages SET status = 'pending', error = ?, finished = ? WHERE cell_id = ? AND stage = ?",
                       (why, now(), cell_id, stage))

    def stage_failed(self, cell_id: str, stage: str, error: str, seconds: float | None = None) -> None:
        with self.transaction() as tx:
            tx.execute(
                "UPDATE stages SET status = 'failed', error = ?, finished = ?, seconds = ? "
                "WHERE cell_id = ? AND stage = ?",
                (error, now(), seconds, cell_id, stage),
            )

    def stage_done(self, cell_id: str, stage: str, *, seconds: float | None, metrics: list[Metric],
                   cost: Cost | None = None, artifacts: dict[str, Path] | None = None, detail: str | None = None,
                   inference: list[dict[str, Any]] | None = None) -> None:
        """Record a finished stage with everything it produced, all in one transaction."""
        with self.transaction() as tx:
            for table in ("metrics", "costs", "artifacts"):
                tx.execute(f"DELETE FROM {table} WHERE cell_id = ? AND stage = ?", (cell_id, stage))
            tx.executemany(
                "INSERT INTO metrics (cell_id, stage, name, value, ci_low, ci_high, n) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(cell_id, stage, m.name, m.value, m.ci_low, m.ci_high, m.n) for m in metrics],
            )
            if cost is not None:
                tx.execute(
                    "INSERT INTO costs (cell_id, stage, wall_seconds, device, instance, price_per_hour, usd, tokens, "
                    "tokens_per_second, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (cell_id, stage, cost.wall_seconds, cost.device, cost.instance, cost.price_per_hour, cost.usd,
                     cost.tokens, cost.tokens_per_second, cost.note),
                )
            tx.executemany(
                "INSERT INTO artifacts (cell_id, stage, kind, path) VALUES (?, ?, ?, ?)",
                [(cell_id, stage, kind, self.relative(path)) for kind, path in (artifacts or {}).items()],
            )
            if inference is not None:
                tx.execute("DELETE FROM inference WHERE cell_id = ?", (cell_id,))
                for row in inference:
                    tx.execute(
                        f"INSERT INTO inference (cell_id, {', '.join(INFERENCE_COLUMNS)}) VALUES (:cell_id, "
                        f"{', '.join(':' + c for c in INFERENCE_COLUMNS)})",
                        {**dict.fromkeys(INFERENCE_COLUMNS), **row, "cell_id": cell_id},
                    )
            tx.execute(
                "UPDATE stages SET status = 'done', error = NULL, finished = ?, seconds = ?, detail = ? "
                "WHERE cell_id = ? AND stage = ?",
                (now(), seconds, detail, cell_id, stage),
            )

    def record_provenance(self, cell_id: str, prov: dict[str, Any]) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO provenance (cell_id, device, git_sha, data_hash, python, packages, recorded) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (cell_id, prov.get("device"), prov.get("git_sha"), prov.get("data_hash"), prov.get("python"),
                 json.dumps(prov.get("packages") or {}), now()),
            )

    def relative(self, path: Path) -> str:
        if not Path(path).is_absolute():   # already relative to the storage root (a task's record)
            return Path(path).as_posix()
        try:
            return str(Path(path).resolve().relative_to(self.study_dir.resolve()))
        except ValueError:
            return str(path)

    # ------------------------------------------------------------ reading

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in self.conn.execute(sql, params)]

    def status_counts(self, cell_ids: list[str] | None = None) -> dict[str, int]:
        rows = self.rows("SELECT cell_id, status FROM stages")
        wanted = set(cell_ids) if cell_ids is not None else None
        counts = dict.fromkeys(STATUSES, 0)
        for row in rows:
            if wanted is None or row["cell_id"] in wanted:
                counts[row["status"]] += 1
        return counts
