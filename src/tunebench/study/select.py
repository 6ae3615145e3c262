"""`--only EXPR`: run a subset of a study's cells, and the `--yes` guard on large grids.

EXPR is a comma-separated list of terms, all of which must hold:
    key=value          an axis (model, task, method, fraction, count, lora_r, lora_alpha, lora_dropout, epochs,
                       seed) or any dotted field (lora.alpha, data.source, eval.limit, ...)
    key=v1|v2          any of several values
    PREFIX             a cell id prefix (several prefixes: any of them)
e.g. `--only method=lora,task=classification` or `--only smollm2-135m-instruct-cls-lora-3f`.
"""

from __future__ import annotations

from typing import Any

import yaml

from tunebench.config.study import Cell, Study, check_path
from tunebench.errors import UserError

MAX_CELLS_WITHOUT_YES = 50
AXES = ("model", "task", "method", "fraction", "count", "lora_r", "lora_alpha", "lora_dropout", "epochs", "seed")
EXAMPLE = "e.g. --only method=lora,task=classification, or a cell id prefix from 'tunebench run --dry-run'"


def parse_value(text: str, key: str) -> Any:
    value = yaml.safe_load(text) if text.strip() else ""
    return value.replace("-", "_") if key == "method" and isinstance(value, str) else value


def field_value(cell: Cell, key: str) -> Any:
    if key in AXES:
        return cell.axes()[key]
    node: Any = cell.config
    for part in key.split("."):
        node = getattr(node, part)
    return node


def select_cells(cells: list[Cell], expr: str | None) -> list[Cell]:
    if not expr or not expr.strip():
        return cells
    conditions: list[tuple[str, list[Any]]] = []
    prefixes: list[str] = []
    for term in (t.strip() for t in expr.split(",")):
        if not term:
            continue
        key, sep, value = term.partition("=")
        if not sep:
            prefixes.append(term)
            continue
        key = key.strip()
        if key not in AXES:
            try:
                check_path(key, where=f"--only '{term}'")
            except UserError as err:
                raise UserError(err.problem, f"axes: {', '.join(AXES)}; or a dotted field ({err.fix})") from None
        conditions.append((key, [parse_value(v, key) for v in value.split("|")]))
    chosen = [c for c in cells
              if (not prefixes or any(c.id.startswith(p) for p in prefixes))
              and all(field_value(c, key) in values for key, values in conditions)]
    if not chosen:
        raise UserError(f"--only '{expr}' matches none of the {len(cells)} cells",
                        f"axes: {', '.join(AXES)} (or any dotted field); {EXAMPLE}")
    return chosen


def check_size(cells: list[Cell], yes: bool, study: Study) -> None:
    if len(cells) > MAX_CELLS_WITHOUT_YES and not yes:
        raise UserError(
            f"study '{study.name}' has {len(cells)} cells to run (more than {MAX_CELLS_WITHOUT_YES})",
            "add --yes to run them all, or run a part with --only (see the cells with --dry-run)",
        )
