"""Small real studies on the tiny test model, for the runner, store and report tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any


def tiny_study(model_dir: Path, experiments: str, *, name: str = "tiny", limit: int = 8) -> str:
    """A study on the tiny Llama and the built-in samples: few training examples, short evaluations."""
    return f"""
name: {name}
defaults:
  model: {{name: "{model_dir}"}}
  data: {{source: "builtin:classification", task: classification, train_count: 16}}
  eval: {{limit: {limit}, bootstrap: 50, max_new_tokens: 16}}
  training: {{save_steps: 1000}}
experiments:
{experiments}
"""


def write_study(tmp_path: Path, text: str, file_name: str = "study.yaml") -> Path:
    path = tmp_path / file_name
    path.write_text(text)
    return path


def stage_rows(db: Path) -> dict[tuple[str, str], dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return {(r["cell_id"], r["stage"]): dict(r) for r in conn.execute("SELECT * FROM stages")}


def statuses(db: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in stage_rows(db).values():
        out[row["status"]] = out.get(row["status"], 0) + 1
    return out
