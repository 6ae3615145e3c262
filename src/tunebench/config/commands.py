"""`tunebench run`: expand a study into cells (and, with the studies runner, run them)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tunebench.config.study import Study, load_study
from tunebench.errors import UserError

SET_HELP = "set any study field for every cell, e.g. --set lora.r=4 (repeatable)"


def cells_table(study: Study) -> Table:
    table = Table(title=f"study '{study.name}': {len(study.cells)} cell(s)", title_justify="left")
    for column in ("cell id", "model", "task", "method", "train size", "lora r/alpha/dropout", "epochs",
                   "experiments"):
        table.add_column(column, overflow="fold")
    for cell in study.cells:
        ax = cell.axes()
        size = ax["fraction"] if ax["fraction"] is not None else ax["count"]
        lora = f"{ax['lora_r']}/{ax['lora_alpha']:g}/{ax['lora_dropout']}" if ax["lora_r"] is not None else "-"
        epochs = cell.config.training.epochs or f"{cell.config.training.recipe} default"
        table.add_row(cell.id, ax["model"], ax["task"], ax["method"],
                      "all" if size is None and ax["method"] not in ("zero_shot", "few_shot") else str(size or "-"),
                      lora, str(epochs) if ax["epochs"] is not None or ax["method"] not in ("zero_shot", "few_shot")
                      else "-", ", ".join(cell.experiments))
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def run(
        study_file: Path = typer.Argument(..., help="the study YAML file"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the expanded cells and stop"),
        sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    ) -> None:
        """Expand a study into cells and run them."""
        study = load_study(study_file, sets)
        if not dry_run:
            raise UserError("running studies is not available in this version; only --dry-run is",
                            f"use 'tunebench run --dry-run {study_file}' to see the cells")
        Console().print(cells_table(study))
