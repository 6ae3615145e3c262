"""`tunebench run` (a whole study, resumable) and `tunebench report` (the four pillars from its store)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from tunebench import terminal
from tunebench.config.commands import SET_HELP, cells_table
from tunebench.config.study import Study, load_study
from tunebench.errors import UserError

if TYPE_CHECKING:
    from tunebench.study.runner import StudyOutcome

ONLY_HELP = ("run only some cells: key=value terms joined by commas (method=lora,task=classification) "
             "or a cell id prefix")


def default_study_dir(study: Study) -> Path:
    return Path("runs") / study.name


def parse_gpus(text: str | None) -> list[str] | None:
    if text is None:
        return None
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids or not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"--gpus '{text}' is not a list of distinct GPU indices", "e.g. --gpus 0,1")
    import torch

    available = torch.cuda.device_count()
    missing = [i for i in ids if int(i) >= available]
    if missing:
        raise UserError(f"--gpus {text}: this machine has {available} CUDA GPU(s), none with index "
                        f"{' or '.join(missing)}", "leave --gpus out to run the cells one after another"
                        if available == 0 else f"use indices 0 to {available - 1}")
    return ids


def print_plan(study: Study, selected_ids: set[str], console: Console) -> None:
    from tunebench.study.plan import with_trainers

    shown = Study(study.config, [c for c in study.cells if c.id in selected_ids], study.path)
    console.print(cells_table(shown))
    units = with_trainers(shown.cells, study.cells)
    trainings = sum(1 for u in units if u.trainer is not None)
    shared = sum(len(u.epoch_of) for u in units)
    console.print(f"{len(shown.cells)} cell(s): {trainings} training run(s), {len(shown.cells)} evaluation(s)"
                  + (f"; {shared} cell(s) evaluate a per-epoch checkpoint of a shared training run" if shared else ""))
    for unit in units:
        if unit.trainer is not None and unit.epoch_of:
            epochs = ", ".join(str(e) for e in sorted(set(unit.epoch_of.values())))
            console.print(f"  {unit.trainer.id} trains {unit.trainer.config.training.epochs} epochs; its checkpoints "
                          f"at epochs {epochs} serve {len(unit.epoch_of)} more cell(s)")


def print_outcome(outcome: StudyOutcome, console: Console) -> None:
    t, s = outcome.tally, outcome.statuses
    console.print(f"study done: {s.get('done', 0)} stage(s) done ({t.ran} run now, {t.reused} reused"
                  + (f", {t.recovered} recorded again from their files" if t.recovered else "")
                  + f"), {s.get('failed', 0)} failed · {outcome.study_dir / 'results.db'}")
    if t.failed:
        table = Table(title="failed stages", title_justify="left")
        for column in ("cell", "stage", "error"):
            table.add_column(column, overflow="fold")
        for cell_id, stage, error in t.failed:
            table.add_row(cell_id, stage, error)
        console.print(table)
        console.print("fix the cause, then run the same command with --retry-failed")


def plan_json(study: Study, selected_ids: set[str]) -> dict:
    """What `run --dry-run --json` prints: every selected cell with its axes, and the shared training runs."""
    from tunebench.study.plan import with_trainers

    shown = [c for c in study.cells if c.id in selected_ids]
    units = with_trainers(shown, study.cells)
    return {"study": study.name, "cells": [{"id": c.id, **c.axes(), "experiments": list(c.experiments)}
                                           for c in shown],
            "training_runs": sum(1 for u in units if u.trainer is not None),
            "shared_checkpoints": {u.trainer.id: sorted(u.epoch_of) for u in units
                                   if u.trainer is not None and u.epoch_of}}


def outcome_json(outcome: StudyOutcome) -> dict:
    t = outcome.tally
    return {"study_dir": str(outcome.study_dir), "ok": outcome.ok, "stages": dict(outcome.statuses),
            "ran": t.ran, "reused": t.reused, "recovered": t.recovered,
            "failed": [{"cell": c, "stage": s, "error": e} for c, s, e in t.failed],
            "results": str(outcome.study_dir / "results.db")}


def headline_json(report: Any) -> list[dict]:
    """The headline tables (`tunebench report --json`), one record per row, as the report prints them."""
    return [{"table": t.caption, "rows": [dict(zip(t.headers, row, strict=False)) for row in t.rows]}
            for t in report.headline]


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        study_file: Path = typer.Argument(..., help="the study YAML file"),
        out: Path | None = typer.Option(None, "--out", help="study directory (default: runs/<study name>)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the expanded cells and the shared work, and stop"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="run failed stages again"),
        only: str | None = typer.Option(None, "--only", help=ONLY_HELP),
        gpus: str | None = typer.Option(None, "--gpus", help="run cells concurrently on these GPUs of this machine "
                                        "(a local Ray instance with exactly them): --gpus 0,1"),
        executor: str | None = typer.Option(None, "--executor", help="inline (one unit after another, the default) "
                                            "or ray (one Ray task per unit); overrides the study's executor.name"),
        address: str | None = typer.Option(None, "--address", help="the Ray cluster: auto (the one this machine "
                                           "joined) or HOST:PORT; default: a local instance for the run"),
        storage: str | None = typer.Option(None, "--storage", help="where run directories live: a local or NFS "
                                           "path, or an fsspec URI such as s3://bucket/prefix (default: the study "
                                           "directory)"),
        yes: bool = typer.Option(False, "--yes", help="run a study of more than 50 cells"),
        sets: list[str] = typer.Option([], "--set", help=SET_HELP),
        as_json: bool = typer.Option(False, "--json", help="print the plan (--dry-run) or the outcome as JSON on "
                                     "stdout; progress goes to stderr"),
    ) -> None:
        """Run a study: train and evaluate every cell, recording results in runs/<study>/results.db."""
        from tunebench.demo import passive_waiting
        from tunebench.study.select import select_cells

        passive_waiting()   # as `tunebench demo` does: on a busy CPU, spinning OpenMP threads ran ~2.5x slower

        console = terminal.console(stderr=as_json)
        study = load_study(study_file, sets)
        if study.config.search is not None:   # a search samples its cells: tunebench.study.search
            from tunebench.study.search.commands import run_search_command

            run_search_command(study, out or default_study_dir(study), console, dry_run=dry_run, executor=executor,
                               address=address, storage=storage, gpus=parse_gpus(gpus), retry_failed=retry_failed)
            return
        selected = select_cells(study.cells, only)
        from tunebench.data.loader import check_local_sources

        check_local_sources([(c.config.data, c.config.eval.split) for c in selected])
        if dry_run:
            from tunebench.study.preflight import preflight

            notes = preflight(selected)
            if as_json:
                terminal.print_json(plan_json(study, {c.id for c in selected}))
                return
            print_plan(study, {c.id for c in selected}, console)
            for note in notes:
                console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
            console.print(f"checked: every model and data source of the {len(selected)} cell(s)")
            from tunebench.study.predict import predict_cells, print_prediction

            print_prediction(predict_cells(selected, out or default_study_dir(study)), console)
            return
        from tunebench.study.predicted import predict_at_launch
        from tunebench.study.runner import run_study

        try:
            if executor is not None and executor not in ("inline", "ray"):
                raise UserError(f"--executor {executor!r} is not an executor",
                                "use --executor inline or --executor ray")
            study_dir = out or default_study_dir(study)
            # the prediction made before the run, so that the report compares against it (predictions.json)
            outcome = run_study(study, study_dir, only=only, retry_failed=retry_failed,
                                gpus=parse_gpus(gpus), yes=yes, console=console, executor=executor,
                                address=address, storage=storage,
                                before_run=lambda cells: predict_at_launch(cells, study_dir, console))
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: run the same command again to continue; finished stages "
                          "are kept")
            sys.exit(130)
        print_outcome(outcome, console)
        console.print(f"report: tunebench report {outcome.study_dir}")
        if as_json:
            terminal.print_json(outcome_json(outcome))
        if not outcome.ok:
            sys.exit(1)

    @app.command()
    def report(
        study_dir: Path = typer.Argument(..., help="a study directory, e.g. runs/demo"),
        fmt: str = typer.Option("md", "--format", help="md or html (html is one self-contained file)"),
        out: Path | None = typer.Option(None, "--out", help="report file (default: STUDY_DIR/report.md|html)"),
        as_json: bool = typer.Option(False, "--json", help="also print the headline numbers as JSON"),
    ) -> None:
        """Write the study's report: quality, time and cost to train, inference cost, break-even."""
        from tunebench.study.report import write_report

        if fmt not in ("md", "html"):
            raise UserError(f"--format {fmt!r} is not a report format", "use --format md or --format html")
        if not study_dir.is_dir():
            raise UserError(f"study directory not found: {study_dir}", "give the directory a study ran in, "
                            "e.g. runs/<study-name>")
        path, written = write_report(study_dir, fmt, out)
        if as_json:
            from tunebench.study.predicted import compare

            terminal.print_json({"report": str(path), "verdicts": written.verdicts,
                                 "headline": headline_json(written),
                                 "predicted_vs_actual": compare(study_dir).as_json()})
            return
        terminal.console().print(f"report: {path}")
