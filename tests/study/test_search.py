"""The search: its spec is checked like every section, a killed search resumes without repeating a trial,
pruning stops a trial that cannot learn, two objectives give a non-dominated set. Real Optuna, a real
journal file, real training of the tiny Llama."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console
from tinystudy import stage_rows, write_study

from tunebench.config.study import load_study
from tunebench.errors import UserError
from tunebench.study.search.loop import open_search, run_search
from tunebench.study.stages import StageFunctions, real_stages


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def search_study(model_dir, search: str, *, epochs: int = 2, name: str = "search") -> str:
    return f"""
name: {name}
defaults:
  model: {{name: "{model_dir}"}}
  method: lora
  data: {{source: "builtin:classification", task: classification, train_count: 16}}
  eval: {{limit: 4, bootstrap: 20, max_new_tokens: 8}}
  training: {{save_steps: 1000, epochs: {epochs}}}
search:
{search}
"""


class Counting:
    def __init__(self) -> None:
        self.real = real_stages()
        self.trained: list[str] = []

    def stages(self) -> StageFunctions:
        return StageFunctions(train=self.train, evaluate=self.real.evaluate)

    def train(self, cfg, run, **kwargs):
        self.trained.append(run.path.name)
        return self.real.train(cfg, run, **kwargs)


def quiet() -> Console:
    return Console(quiet=True)


LR_SPACE = """  parameters:
    training.learning_rate: {low: 1.0e-8, high: 0.1, log: true}
  objectives: [{metric: eval_loss}]
"""


def test_a_killed_search_resumes_without_repeating_trials(tmp_path, tiny_llama_dir):
    path = write_study(tmp_path, search_study(tiny_llama_dir, LR_SPACE + "  budget: {trials: 1}\n", epochs=1))
    out = tmp_path / "runs"
    first = Counting()
    run_search(load_study(path), out, console=quiet(), stages=first.stages())
    assert len(first.trained) == 1

    # a driver killed mid-trial: the trial was asked (its parameters are in the journal) and never told
    study = load_study(write_study(tmp_path, search_study(tiny_llama_dir, LR_SPACE + "  budget: {trials: 2}\n",
                                                          epochs=1)))
    osearch = open_search(study, out)
    osearch.enqueue_trial({"training.learning_rate": 0.02})
    left = osearch.ask()
    left.suggest_float("training.learning_rate", 1.0e-8, 0.1, log=True)
    from tunebench.study.search.loop import trial_cell

    cell = trial_cell(study.cells[0].config.model_dump(mode="json"), left.params, "t")
    left.set_user_attr("cell_id", cell.id)

    again = Counting()
    outcome = run_search(study, out, console=quiet(), stages=again.stages())
    assert again.trained == [cell.id]            # the first trial is not repeated; the left one is redone
    trials = open_search(study, out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[0].params != left.params
    assert trials[2].params == left.params and trials[2].user_attrs["cell_id"] == cell.id
    assert trials[2].user_attrs["requeued_from"] == left.number
    assert outcome.trials == {"complete": 2, "fail": 1}

    third = Counting()   # the budget is spent: nothing runs
    run_search(study, out, console=quiet(), stages=third.stages())
    assert third.trained == []
    rows = stage_rows(out / "results.db")
    assert {cid for cid, _ in rows} == {t.user_attrs["cell_id"] for t in trials}


def test_pruning_stops_a_trial_that_cannot_learn_at_its_first_epoch(tmp_path, tiny_llama_dir):
    spec = LR_SPACE + "  pruner: {name: median, n_startup_trials: 1}\n  budget: {trials: 2}\n"
    study = load_study(write_study(tmp_path, search_study(tiny_llama_dir, spec, epochs=3)))
    out = tmp_path / "runs"
    osearch = open_search(study, out)
    osearch.enqueue_trial({"training.learning_rate": 0.01})   # learns
    osearch.enqueue_trial({"training.learning_rate": 1e-8})   # cannot
    run_search(study, out, console=quiet())
    good, poor = open_search(study, out).get_trials()
    assert good.state.name == "COMPLETE" and sorted(good.intermediate_values) == [1, 2, 3]
    assert poor.state.name == "PRUNED" and list(poor.intermediate_values) == [1], poor.intermediate_values
    rows = stage_rows(out / "results.db")
    assert "stopped early by the driver" in rows[(poor.user_attrs["cell_id"], "train")]["detail"]
    assert poor.user_attrs["usd"] > 0       # a pruned trial is recorded with what it cost


def test_two_objectives_give_a_non_dominated_set(tmp_path, tiny_llama_dir):
    spec = """  parameters:
    training.learning_rate: {low: 1.0e-4, high: 0.1, log: true}
    training.epochs: {low: 1, high: 2}
  objectives: [{metric: eval_loss}, {metric: train_cost_usd}]
  sampler: nsga2
  budget: {trials: 3}
"""
    study = load_study(write_study(tmp_path, search_study(tiny_llama_dir, spec)))
    out = tmp_path / "runs"
    run_search(study, out, console=quiet())
    osearch = open_search(study, out)
    complete = [t for t in osearch.get_trials() if t.state.name == "COMPLETE"]
    front = osearch.best_trials
    assert len(complete) == 3 and front
    from tunebench.study.predicted import read_predictions

    # each trial was predicted before it ran
    assert {t.user_attrs["cell_id"] for t in complete} <= set(read_predictions(out)["cells"])

    def dominates(a, b):
        return all(x <= y for x, y in zip(a.values, b.values, strict=True)) and a.values != b.values

    assert not any(dominates(o, f) for f in front for o in complete)
    assert all(any(dominates(f, o) for f in front) for o in complete if o not in front)

    # the report plots that set: its front (quality against train $, from results.db) is Optuna's
    from tunebench.study.report import write_report

    path, _ = write_report(out)
    text = path.read_text()
    assert "## Search" in text and (out / "report-plots" / "search-front.png").stat().st_size > 0
    section = text[text.index("## Search"):]
    shown = {int(line.split("|")[1]) for line in section.splitlines() if line.startswith("| ") and
             line.split("|")[2].strip() == "complete"}
    assert shown == {t.number for t in front}


BAD = [
    ("  parameters: {lora.alpah: {low: 1, high: 4}}\n  budget: {trials: 2}\n", "unknown field 'lora.alpah'",
     "did you mean 'lora.alpha'"),
    ("  parameters: {lora.r: {low: 8, high: 2}}\n  budget: {trials: 2}\n", "is empty", "low below high"),
    ("  parameters: {training.learning_rate: {low: 0, high: 0.1, log: true}}\n  budget: {trials: 2}\n",
     "log: true needs positive bounds", "low above 0"),
    ("  parameters: {lora.r: {low: 2, high: 8}}\n  sampler: tpee\n  budget: {trials: 2}\n", "not a sampler",
     "did you mean 'tpe'"),
    ("  parameters: {lora.r: {low: 2, high: 8}}\n  objectives: [{metric: accuracy}, {metric: train_cost_usd}]\n"
     "  sampler: nsga2\n  pruner: median\n  budget: {trials: 2}\n", "cannot prune multi-objective", "pruner: none"),
    ("  parameters: {lora.r: {low: 2, high: 8}}\n  budget: {trials: 2}\n  pruner: {name: median, warmup: 1}\n",
     "unknown key", "warmup_epochs"),
    ("  parameters: {lora.r: {low: 2, high: 8}}\n", "gives no limit", "trials"),
    ("  parameters: {lora.r: {low: 2, high: 8}}\n  objectives: [{metric: rouge1}]\n  budget: {trials: 2}\n",
     "not a metric of a classification task", "accuracy"),
]


@pytest.mark.parametrize(("spec", "problem", "fix"), BAD)
def test_a_bad_search_spec_names_the_problem_and_the_fix(tmp_path, spec, problem, fix):
    path = write_study(tmp_path, search_study("tiny", spec))
    with pytest.raises(UserError) as err:
        load_study(path)
    assert problem in err.value.problem and fix in (err.value.fix or "")


def test_the_cli_exits_2_on_a_bad_search_spec_and_dry_runs_a_good_one(tmp_path, cli):
    bad = write_study(tmp_path, search_study("tiny", BAD[0][0]), "bad.yaml")
    result = cli("run", str(bad), "--dry-run")
    assert result.returncode == 2 and "unknown field 'lora.alpah'" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    good = write_study(tmp_path, search_study("tiny", LR_SPACE + "  budget: {trials: 5}\n"), "good.yaml")
    result = cli("run", str(good), "--dry-run", "--out", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    assert "training.learning_rate" in result.stdout and "5 trials" in result.stdout
    assert not (tmp_path / "runs" / "search.journal").exists()   # a dry run starts nothing


@pytest.mark.slow
def test_the_cli_search_killed_mid_trial_resumes(tmp_path, tiny_llama_dir):
    """The real CLI, SIGKILLed while its second trial trains: the rerun redoes only that trial (same cell)."""
    import os
    import signal
    import subprocess
    import sys

    from tinystudy import stage_rows

    spec = LR_SPACE + "  budget: {trials: 2}\n"
    path = write_study(tmp_path, search_study(tiny_llama_dir, spec, epochs=1))
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tunebench.cli", "run", str(path), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    second = False
    for line in process.stdout:
        second = second or "search trial 1:" in line
        if second and "· train" in line:
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGKILL
    left = [t for t in open_search(load_study(path), out).get_trials() if t.state.name == "RUNNING"]
    assert len(left) == 1

    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "asked again with the same parameters" in result.stdout
    trials = open_search(load_study(path), out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    rows = stage_rows(out / "results.db")
    assert rows[(trials[0].user_attrs["cell_id"], "train")]["attempts"] == 1          # never repeated
    assert trials[2].user_attrs["cell_id"] == left[0].user_attrs["cell_id"]
    assert rows[(trials[2].user_attrs["cell_id"], "train")]["attempts"] == 2          # the killed one, redone
