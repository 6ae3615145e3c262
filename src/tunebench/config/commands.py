"""The dry-run table of a study's cells (`tunebench run --dry-run`; the command lives in tunebench.study)."""

from __future__ import annotations

from rich.table import Table

from tunebench.config.study import Study

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

