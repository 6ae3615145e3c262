"""The search loop: the driver asks Optuna for trials, runs each as a cell through run_study, and tells.

Resuming: the journal file holds every trial. A trial a killed driver left RUNNING is told FAIL and asked
again with the same parameters (enqueue_trial), so it maps to the same cell id: run_study then reuses its
finished stages and resumes its training from the last checkpoint. Finished trials are never run again; a
sampled configuration that is already a finished cell is answered from results.db at no cost.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunebench.config.schema import CellConfig
from tunebench.config.search import QUALITY_METRICS, SearchConfig
from tunebench.config.study import Cell, Study, cell_id, validated, with_values
from tunebench.errors import UserError
from tunebench.study.search import JOURNAL

EXHAUSTED_AFTER = 20   # consecutive trials that sample an already-finished cell: the space is used up


@dataclass
class SearchOutcome:
    study_dir: Path
    trials: dict[str, int] = field(default_factory=dict)     # state -> count
    usd: float = 0.0
    stopped_by: str = ""


# ---------------------------------------------------------------- Optuna objects


def quiet_optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def make_sampler(search: SearchConfig, done: int = 0) -> Any:
    """`done`: trials the journal already holds. A resumed search seeds its sampler past them: the same seed
    would replay the first random draws, and sample again the cells it has."""
    optuna = quiet_optuna()
    seed = search.seed + done
    startup = min(10, max(2, (search.budget.trials or 30) // 4))   # a short budget still leaves room to exploit
    if search.sampler in ("tpe", "motpe"):
        # constant_liar: a trial still running counts as a bad result, so concurrent asks spread out
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True, n_startup_trials=startup)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if search.sampler == "nsga2":
        population = max(4, min(50, (search.budget.trials or 100) // 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(search: SearchConfig) -> Any:
    optuna = quiet_optuna()
    p = search.pruning()
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name in ("asha", "successive_halving"):
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_epochs, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()


def journal_storage(study_dir: Path) -> Any:
    quiet_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(Path(study_dir) / JOURNAL)))


def open_search(study: Study, study_dir: Path) -> Any:
    optuna = quiet_optuna()
    search = study.config.search
    assert search is not None
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    storage = journal_storage(study_dir)
    directions = search.directions()
    done = sum(s.n_trials for s in optuna.get_all_study_summaries(storage) if s.study_name == study.name)
    try:
        return optuna.create_study(study_name=study.name, storage=storage, sampler=make_sampler(search, done),
                                   pruner=make_pruner(search), directions=directions, load_if_exists=True)
    except ValueError as err:   # the journal holds this study with other directions
        raise UserError(f"{study_dir / JOURNAL}: {err}", "give the changed search its own directory with --out, "
                        "or restore the objectives it was started with") from None


def load_search(study_dir: Path, name: str | None = None) -> Any:
    """An existing search, read-only use (the report)."""
    optuna = quiet_optuna()
    if not (Path(study_dir) / JOURNAL).exists():
        return None
    storage = journal_storage(study_dir)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if not names:
        return None
    return optuna.load_study(study_name=name if name in names else names[0], storage=storage)


def suggest(trial: Any, search: SearchConfig) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, p in search.parameters.items():
        kind = p.kind()
        if kind == "categorical":
            values[key] = trial.suggest_categorical(key, p.choices)
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[key] = trial.suggest_float(key, float(p.low), float(p.high), step=p.step, log=p.log)
    return values


def trial_cell(base: dict[str, Any], values: dict[str, Any], where: str) -> Cell:
    cfg = validated(CellConfig, with_values(base, values), f"{where}: search trial {values}").normalized()
    return Cell(cell_id(cfg), cfg, ["search"])


# ---------------------------------------------------------------- reading trials back from results.db


def cell_results(study_dir: Path, cid: str) -> dict[str, Any]:
    """What results.db knows of one trial's cell: stage statuses, metrics, and the $ it cost."""
    from tunebench.study.store import Store

    if not (Path(study_dir) / "results.db").exists():
        return {}
    with Store.open_readonly(study_dir) as store:
        stages = {r["stage"]: r for r in store.rows("SELECT stage, status, detail, error FROM stages WHERE cell_id = ?",
                                                    (cid,))}
        metrics = {(r["stage"], r["name"]): r["value"] for r in store.rows(
            "SELECT stage, name, value FROM metrics WHERE cell_id = ?", (cid,))}
        costs = {r["stage"]: r["usd"] or 0.0 for r in store.rows("SELECT stage, usd FROM costs WHERE cell_id = ?",
                                                                 (cid,))}
        inference = store.rows("SELECT MIN(usd_per_1k_tokens) AS v FROM inference WHERE cell_id = ?", (cid,))
    return {"stages": stages, "metrics": metrics, "costs": costs,
            "inference": inference[0]["v"] if inference else None}


def objective_values(search: SearchConfig, got: dict[str, Any]) -> list[float] | None:
    values = []
    for o in search.objectives:
        if o.metric == "train_cost_usd":
            value = got["costs"].get("train")
        elif o.metric == "inference_usd_per_1k_tokens":
            value = got["inference"]
        elif o.metric == "eval_loss":
            value = got["metrics"].get(("train", "eval_loss"))
        else:
            value = got["metrics"].get(("eval", o.metric))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        values.append(float(value))
    return values


def was_pruned(got: dict[str, Any]) -> bool:
    train = got.get("stages", {}).get("train")
    return bool(train and train["status"] == "done" and "stopped early by the driver" in (train["detail"] or ""))


def spent_usd(study_dir: Path, cell_ids: set[str]) -> float:
    """$ of every trial cell (training and evaluation), each cell counted once however often it was sampled."""
    total = 0.0
    for cid in cell_ids:
        total += sum(cell_results(study_dir, cid).get("costs", {}).values())
    return total


def counted(trials: list[Any]) -> list[Any]:
    """Trials that used the budget: finished ones, not those a killed driver left and that were asked again."""
    from optuna.trial import TrialState

    again = {t.user_attrs.get("requeued_from") for t in trials}
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in again)]


def requeue_running(osearch: Any, console: Console) -> int:
    """Trials a killed driver left RUNNING: told FAIL, and asked again with the same parameters."""
    from optuna.trial import TrialState

    left = osearch.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in left:
        osearch.tell(t.number, state=TrialState.FAIL)
        osearch.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
    if left:
        console.print(f"{len(left)} trial(s) left running by an earlier driver are asked again with the same "
                      "parameters (their cells and checkpoints are reused)")
    return len(left)


# ---------------------------------------------------------------- the loop


def run_search(study: Study, study_dir: Path, *, console: Console | None = None, executor: str | None = None,
               address: str | None = None, storage: str | None = None, gpus: list[str] | None = None,
               stages: Any = None, retry_failed: bool = False) -> SearchOutcome:
    from optuna.trial import TrialState

    from tunebench.study.lock import StudyLock
    from tunebench.study.runner import prepare_study_dir, run_study
    from tunebench.study.store import Store

    console = console or Console()
    search = study.config.search
    assert search is not None
    prepare_study_dir(study_dir)
    osearch = open_search(study, study_dir)
    requeue_running(osearch, console)
    base = study.cells[0].config.model_dump(mode="json")
    where = str(study.path or study.name)
    name = executor or ("ray" if gpus else study.config.executor.name)
    width = search.concurrency or (len(gpus) if gpus else 1 if name == "inline" else 2)
    prune = search.pruning()
    flip = len(search.directions()) == 1 and \
        QUALITY_METRICS.get(prune.prune_on, "minimize") != search.directions()[0]
    started, earlier_s = time.monotonic(), float(osearch.user_attrs.get("wall_seconds", 0.0))
    outcome = SearchOutcome(study_dir)
    repeats = 0
    stopping: set[int] = set()

    def trial_cells() -> set[str]:
        return {t.user_attrs["cell_id"] for t in osearch.get_trials(deepcopy=False) if "cell_id" in t.user_attrs}

    while True:
        done = counted(osearch.get_trials(deepcopy=False))
        outcome.usd = spent_usd(study_dir, trial_cells())
        wall = earlier_s + time.monotonic() - started
        b = search.budget
        if b.trials is not None and len(done) >= b.trials:
            outcome.stopped_by = f"{b.trials} trials"
        elif b.usd is not None and outcome.usd >= b.usd:
            outcome.stopped_by = f"${outcome.usd:.4f} spent of ${b.usd:g}"
        elif b.wall_seconds is not None and wall >= b.wall_seconds:
            outcome.stopped_by = f"{wall:.0f} s of {b.wall_seconds:g} s"
        elif repeats >= EXHAUSTED_AFTER:
            outcome.stopped_by = f"the space is used up ({repeats} trials in a row sampled finished cells)"
        if outcome.stopped_by:
            break
        k = min(width, b.trials - len(done)) if b.trials is not None else width
        batch = []
        for _ in range(k):
            trial = osearch.ask()
            cell = trial_cell(base, suggest(trial, search), where)
            trial.set_user_attr("cell_id", cell.id)
            batch.append((trial, cell))
        by_cell = {cell.id: trial for trial, cell in batch}
        fresh = [c for c in {cell.id: cell for _, cell in batch}.values()
                 if cell_results(study_dir, c.id).get("stages", {}).get("eval", {"status": ""})["status"] != "done"]
        repeats = 0 if fresh else repeats + len(batch)

        def on_epoch(running: Any, event: Any, by_cell: dict[str, Any] = by_cell) -> bool:
            trial = by_cell.get(event.cell_id)
            value = event.metrics.get(prune.prune_on)
            # a stopped run evaluates once more where it stopped: that is no epoch's value
            if trial is None or prune.name == "none" or value is None or trial.number in stopping:
                return False
            trial.report(-value if flip else value, event.epoch)
            if trial.should_prune():
                stopping.add(trial.number)
                console.print(f"  [yellow]trial {trial.number} pruned[/yellow] at epoch {event.epoch} "
                              f"({prune.prune_on} {value:.4g})", highlight=False)
                return True
            return False

        params = ", ".join(f"trial {t.number}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                            for k, v in t.params.items()) for t, _ in batch)
        console.print(f"[bold]search[/bold] {params}", highlight=False)
        if fresh:
            run_study(Study(study.config, fresh, study.path), study_dir, console=console, executor=executor,
                      address=address, storage=storage, gpus=gpus, stages=stages, retry_failed=retry_failed,
                      on_epoch=on_epoch, yes=True)
        for trial, cell in batch:
            got = cell_results(study_dir, cell.id)
            trial.set_user_attr("usd", sum(got.get("costs", {}).values()))
            values = objective_values(search, got)
            if was_pruned(got):
                trial.set_user_attr("quality", values[0] if values else None)
                osearch.tell(trial, state=TrialState.PRUNED)
            elif values is None:
                failed = [f"{s}: {r['error']}" for s, r in got.get("stages", {}).items() if r["status"] == "failed"]
                trial.set_user_attr("error", "; ".join(failed) or "no objective value recorded")
                osearch.tell(trial, state=TrialState.FAIL)
            else:
                osearch.tell(trial, values if len(values) > 1 else values[0])
        osearch.set_user_attr("wall_seconds", earlier_s + time.monotonic() - started)
    with StudyLock(study_dir), Store.open(study_dir) as store:
        # run_study flags only the cells of its own call as current; every trial's cell belongs to the search
        store.mark_current(sorted(trial_cells()))
    for t in osearch.get_trials(deepcopy=False):
        outcome.trials[t.state.name.lower()] = outcome.trials.get(t.state.name.lower(), 0) + 1
    return outcome


def describe_space(search: SearchConfig) -> list[tuple[str, str]]:
    rows = []
    for key, p in search.parameters.items():
        kind = p.kind()
        if kind == "categorical":
            rows.append((key, "one of " + json.dumps(p.choices)))
        else:
            text = f"{kind} {p.low:g} .. {p.high:g}" + (" (log)" if p.log else "") + \
                (f" step {p.step:g}" if p.step else "")
            rows.append((key, text))
    return rows
