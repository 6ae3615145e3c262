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
        from tunebench.train.signals import EXIT_SIGTERM

        study = load_study(study_file, sets)
        cell = single_cell(study, "train")
        if gpus is not None and not inside_launcher():
            ids = parse_gpus(gpus)
            use_gpus(ids, gpus)
            if len(ids) > 1:
                args = ["train", str(study_file), *[a for s in sets for a in ("--set", s)],
                        *(["--out", str(out)] if out else []), *(["--resume"] if resume else []),
                        *(["--force"] if force else [])]
                code, terminated = relaunch(ids, args)
                if terminated:
                    run = RunDir.for_cell(out or Path("runs") / study.name, cell.id)
                    stopped(None, "SIGTERM", latest_checkpoint(run), "handed on to every training process")
                raise typer.Exit(EXIT_SIGTERM if terminated else code)
        run = RunDir.for_cell(out or Path("runs") / study.name, cell.id)
        train_one(cell, run, resume=resume, force=force)


def train_one(cell: Any, run: Any, *, resume: bool, force: bool) -> None:
    from tunebench.train.engine import TrainingInterrupted, train_cell
    from tunebench.train.signals import Terminated, exit_code, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            train_cell(cell, run, resume=resume, force=force, progress=True)
    except TrainingInterrupted as stop:
        stopped(stop.step, stop.signal_name, stop.checkpoint)
        raise typer.Exit(exit_code(stop.signal_name)) from None
    except KeyboardInterrupt as err:  # outside the training loop (loading, the final save): no new checkpoint
        name = "SIGTERM" if isinstance(err, Terminated) else "SIGINT"
        stopped(None, name, latest_checkpoint(run))
        raise typer.Exit(exit_code(name)) from None


def latest_checkpoint(run: Any) -> Any:
    from tunebench.train.checkpoints import latest_checkpoint

    return latest_checkpoint(run.checkpoints) if run.checkpoints.is_dir() else None


def stopped(step: int | None, signal_name: str, checkpoint: Any, how: str = "stopped outside a training step") -> None:
    """What an interrupted run says: which signal, where it stopped, how to go on."""
    from tunebench import terminal

    what = "interrupted" if signal_name == "SIGINT" else "terminated (SIGTERM)"
    if step is not None:
        where = f"stopped at step {step}, checkpoint written to {checkpoint}"
    elif checkpoint is not None:
        where = f"{how}; the latest checkpoint is {checkpoint}"
    else:
        where = f"{how}; no checkpoint was written yet"
    resume = "continue with the same command and --resume" if checkpoint is not None else "start it again"
    terminal.console(stderr=True).print(f"{what}: {where}; {resume}", highlight=False, soft_wrap=True)
