"""End to end through the real CLI on a tiny model: `tunebench demo --study` runs a study and reports it (and
reuses it the second time), a study killed with SIGKILL resumes with only what is missing, and the report is
written from the store (tables, plots, a self-contained HTML page)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tinystudy import stage_rows, statuses, tiny_study, write_study

EXPERIMENTS = """  - sweep: {method: [zero_shot, few_shot]}
    zip:
      data.task: [classification, summarization]
      data.source: ["builtin:classification", "builtin:summarization"]
  - method: lora
    sweep: {training.epochs: [1, 2]}
  - method: lora
    data: {train_count: 8}
    training: {epochs: 2}
"""


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_llama_dir, cli):
    root = tmp_path_factory.mktemp("e2e")
    study = write_study(root, tiny_study(tiny_llama_dir, EXPERIMENTS, name="e2e"))
    result = cli("demo", "--study", str(study), "--out", str(root / "runs"), env={"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "runs", result


def test_demo_reports_then_reuses_the_study(finished_study, cli):
    out, first = finished_study
    text = " ".join(first.stdout.split())
    assert f"report: {out / 'report.md'}" in text and (out / "report.html").exists()
    assert "classification: accuracy (%)" in text and "classification: cost and break-even" in text
    # what the CPU run chose (threads, weights dtype and why), and CPU time beside wall time per stage
    assert re.search(r"demo on the CPU: \d+ thread\(s\) on \d+ core\(s\); weights in (float32|bfloat16) \(", text)
    assert re.search(r"done eval in [\d.]+ s \(CPU [\d.]+ s\)", text)
    study = out.parent / "study.yaml"
    second = cli("demo", "--study", str(study), "--out", str(out), env={"OMP_NUM_THREADS": "1"})
    assert second.returncode == 0 and "(0 run now, 10 reused)" in " ".join(second.stdout.split())


def test_the_study_runs_every_stage_once(finished_study):
    out, result = finished_study
    # 4 prompting evaluations; lora: 2 training runs (epochs 1 and 2 share one) and 3 evaluations
    assert statuses(out / "results.db") == {"done": 4 + 3 + 3}
    assert len(re.findall(r"\] \S+ · train", result.stdout)) == 2
    with sqlite3.connect(out / "results.db") as conn:
        shared = conn.execute("SELECT c.cell_id, c.train_run, c.epoch, s.detail FROM cells c JOIN stages s "
                              "ON s.cell_id = c.cell_id AND s.stage = 'train' WHERE c.epochs = 1").fetchall()
        assert len(shared) == 1 and shared[0][2] == 1 and "epoch-1 checkpoint" in shared[0][3]
        assert (out / shared[0][0] / "train" / "adapter").resolve() == \
            (out / shared[0][1] / "train" / "checkpoints" / "epoch-1").resolve()
        tokens = conn.execute("SELECT n, value FROM metrics WHERE name = 'prompt_tokens_mean'").fetchall()
        assert len(tokens) == 7 and all(n == 8 and value > 0 for n, value in tokens)
        provenance = conn.execute("SELECT device, data_hash, packages FROM provenance").fetchall()
        assert len(provenance) == 7 and all(d and h and "torch" in p for d, h, p in provenance)


def test_report_markdown_has_the_four_pillars(finished_study, cli):
    out, _ = finished_study
    result = cli("report", str(out))
    assert result.returncode == 0, result.stderr
    text = (out / "report.md").read_text()
    for heading in ("## 1. Quality", "zero-shot vs few-shot vs fine-tuned", "metric vs epochs", "sample efficiency",
                    "## 2. Time and cost to train", "## 3. Inference cost", "## 4. Break-even", "Provenance"):
        assert heading in text, heading
    assert "tunebench bench serve" in text           # no load test: says how to produce one
    assert re.search(r"\d+\.\d \[\d+\.\d, \d+\.\d\] n=8", text)   # numbers carry their interval and n
    assert "requests to pay back training" in text and "assumed:" in text
    plots = sorted((out / "report-plots").glob("*.png"))
    assert {p.name.split("-")[0] for p in plots} >= {"quality", "epochs", "sample", "breakeven"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (out / link).exists(), link


def test_report_html_is_self_contained(finished_study, cli, tmp_path):
    out, _ = finished_study
    page = tmp_path / "elsewhere" / "report.html"
    result = cli("report", str(out), "--format", "html", "--out", str(page))
    assert result.returncode == 0, result.stderr
    html = page.read_text()
    images = re.findall(r"<img [^>]*src='([^']+)'", html)
    assert len(images) >= 4 and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=['\"](?!data:)", html)
    assert "<table>" in html and "Break-even" in html


def readable_stages(db: Path) -> dict:
    try:
        return stage_rows(db) if db.exists() else {}
    except sqlite3.OperationalError:  # the runner is still creating the schema
        return {}


def test_sigkill_mid_study_then_rerun_completes_only_what_is_missing(tmp_path, tiny_llama_dir):
    study = write_study(tmp_path, tiny_study(tiny_llama_dir, """  - method: zero_shot
  - method: lora
    sweep: {training.epochs: [1, 3]}
""", name="killed"))
    out = tmp_path / "runs"
    db = out / "results.db"
    command = [sys.executable, "-m", "tunebench.cli", "run", str(study), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runner = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:   # kill once a cell is done and the training run is under way
            rows = readable_stages(db)
            if any(r["status"] == "done" for r in rows.values()) and any(
                    r["status"] == "running" and r["stage"] == "train" for r in rows.values()):
                break
            time.sleep(0.05)
        runner.send_signal(signal.SIGKILL)
    finally:
        runner.wait()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        orphans = conn.execute("SELECT COUNT(*) FROM metrics m JOIN stages s USING (cell_id, stage) "
                               "WHERE s.status != 'done'").fetchone()[0]
        assert orphans == 0
    rows = stage_rows(db)
    done = {k for k, r in rows.items() if r["status"] == "done"}
    assert done and any(r["status"] == "running" for r in rows.values())
    finished = [p for cell, _ in done for p in (out / cell).rglob("*") if p.is_file()]
    mtimes = {p: p.stat().st_mtime_ns for p in finished}

    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert statuses(db) == {"done": 1 + 2 + 2}
    assert f"({5 - len(done)} run now, {len(done)} reused)" in " ".join(result.stdout.split())
    assert {p: p.stat().st_mtime_ns for p in finished} == mtimes
    assert "(again: it was interrupted)" in result.stdout

