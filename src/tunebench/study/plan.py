"""From cells to units of work, doing shared work once.

Cells are already de-duplicated (`CellConfig.normalized()`: one zero-shot evaluation per model, prompt and
data, whatever the LoRA settings). On top of that, trained cells that differ only in `training.epochs` share
one training run: the group trains once with the largest epoch count and each cell evaluates the per-epoch
checkpoint of its own epoch count. The training key of a cell is its config with the epochs set to the
group's maximum, which is itself a cell of the group (the one that owns the training run).

A unit is what a worker runs in one go: a training run and the evaluations that use it, or one prompting
evaluation. Units are independent of each other, so they can run concurrently, one per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunebench.config.schema import PROMPT_METHODS, CellConfig
from tunebench.config.study import Cell, cell_id


@dataclass
class Unit:
    cells: list[Cell]                          # evaluated in this order; the trainer first when there is one
    trainer: Cell | None = None                # the cell that owns the training run
    epoch_of: dict[str, int] = field(default_factory=dict)   # shared run: cell id -> checkpoint epoch

    @property
    def id(self) -> str:
        return (self.trainer or self.cells[0]).id

    def stages(self, cell: Cell) -> list[str]:
        """The stages recorded for a cell of this unit."""
        names = [] if cell.config.method in PROMPT_METHODS else ["train"]
        names.append("eval")
        if cell.config.loadtest.enabled:
            names.append("loadtest")
        return names


# Training examples of the built-in samples; other sources count as this many until measured.
KNOWN_SIZES = {"builtin:classification": 160, "builtin:summarization": 72}
DEFAULT_EXAMPLES = 1000


def unit_cost(unit: Unit) -> float:
    """A scheduling estimate of a unit's work, in example-passes × model size: the longest units go first.

    Training: examples × epochs (the token count × epochs the issue asks for, up to a constant per task);
    each evaluation counts its examples once. Nothing is loaded: the driver plans thousands of units."""
    from tunebench.models.presets import PRESETS

    def size(cfg: CellConfig) -> float:   # ~12 h^2 per layer, in billions; 1 for a model without a preset
        arch = PRESETS[cfg.model.name].architecture if cfg.model.name in PRESETS else {}
        hidden = arch.get("hidden_size") or arch.get("d_model")
        layers = arch.get("num_hidden_layers") or arch.get("num_layers")
        return 12 * hidden**2 * layers / 1e9 if hidden and layers else 1.0

    def examples(cfg: CellConfig) -> float:
        total = KNOWN_SIZES.get(cfg.data.source, DEFAULT_EXAMPLES)
        if cfg.data.train_count:
            return float(min(cfg.data.train_count, total) if cfg.data.source in KNOWN_SIZES else cfg.data.train_count)
        return total * (cfg.data.train_fraction or 1.0)

    cost = 0.0
    if unit.trainer is not None:
        cfg = unit.trainer.config
        cost += examples(cfg) * (cfg.training.epochs or 1) * size(cfg)
    for cell in unit.cells:
        cost += float(cell.config.eval.limit or 100) * size(cell.config) * 0.1
    return cost


def without_epochs(cfg: CellConfig) -> str:
    return cell_id(cfg.model_copy(update={"training": cfg.training.model_copy(update={"epochs": None})}))


def plan(cells: list[Cell]) -> list[Unit]:
    """Group cells into units, keeping the study's order (a unit sits where its first cell was)."""
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        cfg = cell.config
        shares = cfg.method not in PROMPT_METHODS and cfg.training.epochs is not None
        key = f"epochs:{without_epochs(cfg)}" if shares else f"cell:{cell.id}"
        groups.setdefault(key, []).append(cell)
    return [unit_for(members) for members in groups.values()]


def unit_for(members: list[Cell]) -> Unit:
    if members[0].config.method in PROMPT_METHODS:
        return Unit(cells=members)
    members = sorted(members, key=lambda c: c.config.training.epochs or 0)
    trainer = members[-1]
    if len(members) == 1:
        return Unit(cells=members, trainer=trainer)
    epoch_of = {c.id: c.config.training.epochs for c in members if c is not trainer}
    return Unit(cells=[trainer, *members[:-1]], trainer=trainer, epoch_of=epoch_of)


def with_trainers(selected: list[Cell], all_cells: list[Cell]) -> list[Unit]:
    """Units for a selection of cells (--only): a selected cell that shares a training run still needs it."""
    wanted = {c.id for c in selected}
    units = []
    for unit in plan(all_cells):
        cells = [c for c in unit.cells if c.id in wanted]
        if not cells:
            continue
        epoch_of = {cid: e for cid, e in unit.epoch_of.items() if cid in wanted}
        units.append(Unit(cells=cells, trainer=unit.trainer, epoch_of=epoch_of))
    return units

