"""Cost before launch: a cell's predicted $ from earlier runs of the same model at other sizes, against what
it then cost (the real tiny Llama, trained and evaluated).

The stages are timed on this process's CPU clock, for the earlier runs and the new one alike: on a machine
shared with other work, wall time grows with whatever else runs at that moment (here: the prediction off by
26% with a load that came and went on the test's core, in 2 of 2 runs), so a wall-clock comparison
tests the neighbours, not the prediction. CPU seconds count the work itself (a busy sibling hyperthread
still slows them, far less); the prediction (tokens per example, the fitted rate, evaluation per example) is
what must hold within ±25%.
"""

from __future__ import annotations

import sqlite3
import time

import pytest
import torch
from rich.console import Console
from tinystudy import tiny_study, write_study

from tunebench.config.study import load_study
from tunebench.study.predict import predict_cells, print_prediction
from tunebench.study.runner import run_study


@pytest.fixture
def cpu_clock(monkeypatch):
    """Every stage timing in this process (tunebench.study.task, train.metering, evaluate.runner read
    time.perf_counter) on the process's CPU clock instead: the same clock for the calibration and the run."""
    monkeypatch.setattr(time, "perf_counter", time.process_time)


def test_the_predicted_cost_of_a_cell_is_within_25_percent_of_its_actual_cost(tmp_path, tiny_llama_dir, cpu_clock):
    torch.set_num_threads(1)
    out = tmp_path / "runs"

    def lora(count: int, epochs: int, limit: int, name: str):
        text = tiny_study(tiny_llama_dir, f"  - method: lora\n    data: {{train_count: {count}}}\n"
                          f"    training: {{epochs: {epochs}}}", limit=limit)
        return load_study(write_study(tmp_path, text, f"{name}.yaml"))

    # the first stage a process runs also pays its imports and cold caches, once: warm up elsewhere, as a
    # study of many cells amortizes it
    run_study(lora(8, 1, 2, "warm"), tmp_path / "warm", console=Console(quiet=True))
    for count, epochs, limit in ((16, 1, 4), (48, 3, 16)):     # two earlier runs, a smaller and a larger one
        run_study(lora(count, epochs, limit, f"earlier{count}"), out, console=Console(quiet=True))
    big = lora(32, 2, 12, "new")
    prediction = predict_cells(big.cells, out)
    (cell,) = prediction.cells
    assert "train s: fitted to earlier runs" in cell.sources and cell.train_examples == 32 and cell.eval_examples == 12
    console = Console(record=True, width=200)
    print_prediction(prediction, console)
    assert "predicted total" in console.export_text()
    run_study(big, out, console=Console(quiet=True))
    with sqlite3.connect(out / "results.db") as conn:
        actual = conn.execute("SELECT SUM(usd) FROM costs WHERE cell_id = ?", (cell.cell_id,)).fetchone()[0]
    with sqlite3.connect(out / "results.db") as conn:
        seconds = dict(conn.execute("SELECT stage, wall_seconds FROM costs WHERE cell_id = ?", (cell.cell_id,)))
    why = (cell.train_s, cell.eval_s, seconds)
    assert abs(prediction.total() - actual) <= 0.25 * actual, (prediction.total(), actual, why)
    # and the training on its own, which the evaluation share of the total can hide (a 2-epoch run predicted
    # as 1 epoch came to 0.63-0.87 of the actual training in 7 runs here: most, not all, caught)
    assert abs(cell.train_s - seconds["train"]) <= 0.25 * seconds["train"], why
