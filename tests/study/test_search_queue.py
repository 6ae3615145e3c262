"""The search keeps its trial queue full on one executor: a real local Ray instance, started by the search
itself, runs stand-in stages that sleep for `training.max_steps / 10` seconds. One slow trial and three fast
ones with two slots: the fast ones follow each other in the second slot while the slow one still runs (in
lockstep batches the third trial would wait for the slow one), and Ray is started and stopped once for the
whole search, not once per batch."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from datetime import datetime

import pytest
from rich.console import Console
from tinystudy import write_study

from tunebench.config.study import load_study
from tunebench.rundir import write_json
from tunebench.study import stages as st
from tunebench.study.search.loop import open_search, run_search

ray = pytest.importorskip("ray")

SLOW, FAST = 100, 5     # max_steps: 10 s and 0.5 s


def sleepy_train(cfg, run, **kwargs):
    start = time.time()
    time.sleep(cfg.training.max_steps / 10)
    write_json(run.train / "summary.json", {"device": "stand-in", "wall_time_s": time.time() - start,
                                            "tokens_seen": 100, "start": start, "end": time.time()})
    return {}


def sleepy_eval(cfg, run, **kwargs):
    folder = st.eval_dir(cfg, run)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.jsonl").write_text("")
    write_json(folder / "metrics.json", {"n_evaluated": 1, "metrics": {"accuracy": 1.0 / cfg.training.max_steps}})
    return {}


STUDY = """name: queue
defaults: {method: lora, cost: {price_per_hour: 1.0}}
search:
  parameters:
    training.max_steps: {low: 1, high: 200}
  objectives: [{metric: accuracy}]
  sampler: random
  concurrency: 2
  budget: {trials: 4}
"""


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """One search through the Ray executor, counting how often Ray is started and stopped."""
    if ray.is_initialized():
        pytest.skip("a Ray instance is already up in this process: the search would not start its own")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the stand-in stages travel by value
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_memory_usage_threshold", "0.99")   # a busy machine is not a reason to kill tests
    tmp = tmp_path_factory.mktemp("queue")
    study = load_study(write_study(tmp, STUDY))
    out = tmp / "runs"
    osearch = open_search(study, out)
    for steps in (SLOW, FAST, FAST + 1, FAST + 2):
        osearch.enqueue_trial({"training.max_steps": steps})
    calls = {"init": 0, "shutdown": 0}
    real_init, real_shutdown = ray.init, ray.shutdown

    def init(*args, **kwargs):
        calls["init"] += 1
        return real_init(*args, **kwargs)

    def shutdown(*args, **kwargs):
        calls["shutdown"] += 1
        return real_shutdown(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray, "init", init)
        mp.setattr(ray, "shutdown", shutdown)
        outcome = run_search(study, out, console=Console(quiet=True), executor="ray",
                             stages=st.StageFunctions(train=sleepy_train, evaluate=sleepy_eval))
    assert not ray.is_initialized()
    trials = open_search(study, out).get_trials()
    ended = {cid: datetime.fromisoformat(f).timestamp() for cid, f in sqlite3.connect(out / "results.db").execute(
        "SELECT cell_id, finished FROM stages WHERE stage = 'eval'")}
    times = {}
    for t in trials:
        cid = t.user_attrs["cell_id"]
        summary = json.loads((out / cid / "train" / "summary.json").read_text())
        times[t.params["training.max_steps"]] = (summary["start"], ended[cid])   # training started, unit ended
    return outcome, trials, times, calls


@pytest.mark.slow
def test_a_new_trial_starts_while_the_slow_one_of_the_first_wave_still_runs(searched):
    outcome, trials, times, _ = searched
    assert outcome.trials == {"complete": 4} and outcome.stopped_by == "4 trials"
    assert [t.params["training.max_steps"] for t in trials] == [SLOW, FAST, FAST + 1, FAST + 2]
    slow_end = times[SLOW][1]     # when the slow trial's unit ended (its evaluation recorded; whole seconds)
    assert times[FAST][0] < slow_end                  # the first wave: two at once
    # In lockstep batches trial 2 would wait for the slow trial 0 to end; a queue kept full starts it (and then
    # trial 3) as soon as trial 1 frees its slot. Both trials of the first wave pay the same start-up costs (a
    # fresh Ray worker, imports) in parallel, so the margin is the 9.5 s their training differs by.
    assert times[FAST + 1][0] < slow_end and times[FAST + 2][0] < slow_end, times
    assert [t.value for t in trials] == [1.0 / t.params["training.max_steps"] for t in trials]


@pytest.mark.slow
def test_ray_is_started_once_for_the_whole_search(searched):
    _, _, _, calls = searched
    assert calls == {"init": 1, "shutdown": 1}
