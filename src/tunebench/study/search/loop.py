"""The search loop: the driver asks Optuna for trials, runs each as a cell through one driver session (one
executor for the whole search), and tells. A trial is asked as soon as a slot frees: a queue kept full, not
batches waiting for their slowest trial.

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


def cell_results(study_dir: Path, cid: str, store: Any = None) -> dict[str, Any]:
    """What results.db knows of one trial's cell: stage statuses, metrics, and the $ it cost. `store`: the
    driver's open one (a search session), else results.db is opened read-only."""
    from contextlib import nullcontext

    from tunebench.study.store import Store

    if store is None and not (Path(study_dir) / "results.db").exists():
        return {}
    with nullcontext(store) if store is not None else Store.open_readonly(study_dir) as store:
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


def spent_usd(study_dir: Path, cell_ids: set[str], store: Any = None) -> float:
    """$ of every trial cell (training and evaluation), each cell counted once however often it was sampled."""
    total = 0.0
    for cid in cell_ids:
        total += sum(cell_results(study_dir, cid, store).get("costs", {}).values())
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


def budget_spent(search: SearchConfig, told: int, asked: int, usd: float, wall: float, repeats: int) -> str:
    """Why no further trial may be asked ('' while one may): `told` trials counted, `asked` still running."""
    b = search.budget
    if b.trials is not None and told + asked >= b.trials:
        return f"{b.trials} trials"
    if b.usd is not None and usd >= b.usd:
        return f"${usd:.4f} spent of ${b.usd:g}"
    if b.wall_seconds is not None and wall >= b.wall_seconds:
        return f"{wall:.0f} s of {b.wall_seconds:g} s"
    if repeats >= EXHAUSTED_AFTER:
        return f"the space is used up ({repeats} trials in a row sampled finished cells)"
    return ""


def run_search(study: Study, study_dir: Path, *, console: Console | None = None, executor: str | None = None,
               address: str | None = None, storage: str | None = None, gpus: list[str] | None = None,
               stages: Any = None, retry_failed: bool = False) -> SearchOutcome:
    """One driver session for the whole search: a trial is asked and submitted whenever a slot is free (a trial
    ended, was pruned, or was answered from results.db), up to `concurrency` at once, and the budget is checked
    before each ask; trials running when it is spent are let finish. Ray, when used, is started once."""
    from optuna.trial import TrialState

    from tunebench.study.runner import driver_session, prepare_study_dir

    console = console or Console()
    search = study.config.search
    assert search is not None
    prepare_study_dir(study_dir)
    osearch = open_search(study, study_dir)
    requeue_running(osearch, console)
    base = study.cells[0].config.model_dump(mode="json")
    where = str(study.path or study.name)
    prune = search.pruning()
    flip = len(search.directions()) == 1 and \
        QUALITY_METRICS.get(prune.prune_on, "minimize") != search.directions()[0]
    started, earlier_s = time.monotonic(), float(osearch.user_attrs.get("wall_seconds", 0.0))
    outcome = SearchOutcome(study_dir)
    repeats = 0
    stopping: set[int] = set()
    inflight: dict[str, list[tuple[Any, Cell]]] = {}   # unit id -> its trials (several when they sampled one cell)
    by_cell: dict[str, Any] = {}                       # cell id -> the trial its epochs are reported to

    def trial_cells() -> set[str]:
        return {t.user_attrs["cell_id"] for t in osearch.get_trials(deepcopy=False) if "cell_id" in t.user_attrs}

    def on_epoch(running: Any, event: Any) -> bool:
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

    def tell(trial: Any, cell: Cell, store: Any) -> None:
        got = cell_results(study_dir, cell.id, store)
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

    with driver_session(study, study_dir, console=console, executor=executor, address=address, storage=storage,
                        gpus=gpus, stages=stages, retry_failed=retry_failed, on_epoch=on_epoch) as session:
        driver = session.driver
        width = search.concurrency or (len(gpus) if gpus else driver.gpus or
                                       (1 if driver.executor.name == "inline" else 2))
        while True:
            while len(inflight) < width and not outcome.stopped_by:
                asked = sum(len(v) for v in inflight.values())
                outcome.usd = spent_usd(study_dir, trial_cells(), session.store)
                outcome.stopped_by = budget_spent(search, len(counted(osearch.get_trials(deepcopy=False))), asked,
                                                  outcome.usd, earlier_s + time.monotonic() - started, repeats)
                if outcome.stopped_by:
                    break
                trial = osearch.ask()
                cell = trial_cell(base, suggest(trial, search), where)
                trial.set_user_attr("cell_id", cell.id)
                console.print(f"[bold]search[/bold] trial {trial.number}: " + ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()),
                    highlight=False)
                if cell.id in by_cell:   # sampled again while it runs: answered when it ends
                    inflight[next(u for u, ts in inflight.items() if ts[0][1].id == cell.id)].append((trial, cell))
                    continue
                finished = cell_results(study_dir, cell.id, session.store).get("stages", {}).get("eval")
                repeats = repeats + 1 if finished and finished["status"] == "done" else 0
                if not finished:   # kept before it runs, for the report's predicted against actual
                    from tunebench.study.predicted import predict_at_launch
                    predict_at_launch([cell], study_dir, console)
                units = session.add([cell], f"trial {trial.number}")
                if units:
                    inflight[units[0]] = [(trial, cell)]
                    by_cell[cell.id] = trial
                else:   # every stage reused (or kept failed): answered now, at no cost
                    tell(trial, cell, session.store)
            if not inflight:
                break
            for unit_id in driver.step():
                for trial, cell in inflight.pop(unit_id, []):
                    by_cell.pop(cell.id, None)
                    tell(trial, cell, session.store)
                osearch.set_user_attr("wall_seconds", earlier_s + time.monotonic() - started)
        osearch.set_user_attr("wall_seconds", earlier_s + time.monotonic() - started)
        outcome.usd = spent_usd(study_dir, trial_cells(), session.store)
        # every trial's cell belongs to the search, those of earlier sessions too
        session.store.mark_current(sorted(trial_cells()))
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
