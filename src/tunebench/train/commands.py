"""`tunebench train`: fine-tune the one cell a study file (with --set) describes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunebench.config.commands import SET_HELP


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        study_file: Path = typer.Argument(..., help="a study YAML file that expands to one cell"),
        sets: list[str] = typer.Option([], "--set", help=SET_HELP),
        out: Path | None = typer.Option(None, "--out", help="study directory (default: runs/<study name>)"),
        resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its latest checkpoint"),
        force: bool = typer.Option(False, "--force", help="delete an existing run of this cell and train again"),
        gpus: str | None = typer.Option(None, "--gpus", help="GPU indices, e.g. 0 or 0,1 (several: data parallel "
                                        "through torchrun)"),
    ) -> None:
        """Fine-tune one cell (LoRA, QLoRA or full): adapter, checkpoints, metrics.jsonl, summary.json."""
        from tunebench.config.study import load_study, single_cell
        from tunebench.rundir import RunDir
        from tunebench.train.launch import inside_launcher, parse_gpus, relaunch, use_gpus

        study = load_study(study_file, sets)
        cell = single_cell(study, "train")
        if gpus is not None and not inside_launcher():
            ids = parse_gpus(gpus)
            use_gpus(ids, gpus)
            if len(ids) > 1:
                args = ["train", str(study_file), *[a for s in sets for a in ("--set", s)],
                        *(["--out", str(out)] if out else []), *(["--resume"] if resume else []),
                        *(["--force"] if force else [])]
                raise typer.Exit(relaunch(ids, args))
        run = RunDir.for_cell(out or Path("runs") / study.name, cell.id)
        train_one(cell, run, resume=resume, force=force)


def train_one(cell: Any, run: Any, *, resume: bool, force: bool) -> None:
    from tunebench import terminal
    from tunebench.train.engine import TrainingInterrupted, train_cell

    try:
        train_cell(cell, run, resume=resume, force=force, progress=True)
    except TrainingInterrupted as stop:
        terminal.console(stderr=True).print(f"interrupted: stopped at step {stop.step}, checkpoint written to "
                                   f"{stop.checkpoint}; continue with the same command and --resume",
                                   highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
