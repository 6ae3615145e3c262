"""`tunebench run STUDY` for a study with a `search:` section: the dry run (space, budget, predicted cost) and
the search itself, with its outcome."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunebench.config.study import Study


def print_search_plan(study: Study, study_dir: Path, console: Console) -> None:
    from tunebench.study.search.loop import describe_space

    search = study.config.search
    assert search is not None
    table = Table(title=f"search space of {study.name} (every other field: the defaults)", title_justify="left")
    table.add_column("parameter")
    table.add_column("distribution")
    for key, text in describe_space(search):
        table.add_row(key, text)
    console.print(table)
    objectives = ", ".join(f"{o.resolved_direction()} {o.metric}" for o in search.objectives)
    pruner = search.pruning()
    b = search.budget
    limits = [f"{b.trials} trials" if b.trials else "", f"${b.usd:g}" if b.usd else "",
              f"{b.wall_seconds:g} s" if b.wall_seconds else ""]
    console.print(f"objectives: {objectives} · sampler: {search.sampler} · pruner: {pruner.name}"
                  + (f" on {pruner.prune_on}" if pruner.name != "none" else "")
                  + f" · budget: {', '.join(x for x in limits if x)}", highlight=False)
    from tunebench.study.predict import print_search_prediction

    print_search_prediction(study, study_dir, console)


def run_search_command(study: Study, study_dir: Path, console: Console, *, dry_run: bool, executor: str | None,
                       address: str | None, storage: str | None, gpus: list[str] | None,
                       retry_failed: bool) -> None:
    if dry_run:
        print_search_plan(study, study_dir, console)
        return
    from tunebench.study.predicted import predict_search_at_launch
    from tunebench.study.search.loop import load_search, run_search

    predict_search_at_launch(study, study_dir, console)   # kept to set against what the search spends
    try:
        outcome = run_search(study, study_dir, console=console, executor=executor, address=address,
                             storage=storage, gpus=gpus, retry_failed=retry_failed)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: run the same command again to continue the search; finished "
                      "trials are kept and the running one is asked again with the same parameters")
        sys.exit(130)
    states = ", ".join(f"{n} {s}" for s, n in sorted(outcome.trials.items()))
    console.print(f"search done ({outcome.stopped_by}): {states} · ${outcome.usd:.4f} spent · "
                  f"{study_dir / 'results.db'}", highlight=False)
    osearch = load_search(study_dir, study.name)
    if osearch is not None:
        best = [t for t in osearch.best_trials] if len(osearch.directions) > 1 else \
            ([osearch.best_trial] if any(t.value is not None for t in osearch.trials) else [])
        for t in best:
            values = ", ".join(f"{v:.4g}" for v in t.values)
            console.print(f"  best: trial {t.number} ({t.user_attrs.get('cell_id')}) = {values} · {t.params}",
                          highlight=False)
    console.print(f"report: tunebench report {study_dir}")
