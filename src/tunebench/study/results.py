"""A study's results read back from its store, grouped the way the report compares them.

An entry is a set of cells that differ only in their seeds: one cell gives a value with its 95% interval
and n; several seeds give mean ± standard deviation over the seeds (and the n of each).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.study.store import Metric, Store

PROMPTING = ("zero_shot", "few_shot")
FINE_TUNED = ("lora", "qlora", "full")
METHOD_ORDER = ("zero_shot", "few_shot", "lora", "qlora", "full")
METHOD_LABEL = {"zero_shot": "zero-shot", "few_shot": "few-shot", "lora": "LoRA", "qlora": "QLoRA",
                "full": "full fine-tuning"}
# The headline metric of each task, and the ones shown beside it (the original's Tables 1 and 3). The
# generation task's are the study's eval.metrics, in its order (`task_metrics`).
PRIMARY = {"classification": "accuracy", "summarization": "rouge1"}
SECONDARY = {"classification": ["macro_f1"], "summarization": ["rouge2", "rougeL"]}
SHOWN_BESIDE = 7  # at most this many metrics beside a generation study's headline one


class Named(dict):
    """A label table that shows a name it has no label for (a user metric) as the name itself."""

    def __missing__(self, key: str) -> str:
        return key


METRIC_LABEL = Named({"accuracy": "accuracy (%)", "macro_f1": "macro-F1 (%)", "rouge1": "ROUGE-1",
                      "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum",
                      "exact_match": "exact match (%)", "token_f1": "token F1 (%)", "bleu": "BLEU", "chrf": "chrF",
                      "json_field_accuracy": "JSON field accuracy (%)", "json_valid": "valid JSON (%)",
                      "json_exact": "JSON exact (%)", "json_schema_valid": "schema-valid JSON (%)"})
# stored as fractions, shown ×100
PERCENT = {"accuracy", "macro_f1", "exact_match", "token_f1", "json_field_accuracy", "json_valid", "json_exact",
           "json_schema_valid"}


@dataclass
class CellResult:
    id: str
    axes: dict[str, Any]
    params: dict[str, Any]
    train_run: str | None
    epoch: int | None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, dict[str, Metric]] = field(default_factory=lambda: defaultdict(dict))
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.axes["model"]

    @property
    def task(self) -> str:
        return self.axes["task"]

    @property
    def method(self) -> str:
        return self.axes["method"]

    def metric(self, name: str, stage: str = "eval") -> Metric | None:
        return self.metrics.get(stage, {}).get(name)

    def done(self, stage: str = "eval") -> bool:
        return self.stages.get(stage, {}).get("status") == "done"

    @property
    def train_examples(self) -> int | None:
        metric = self.metric("train_examples", "train")
        return int(metric.value) if metric is not None and metric.value is not None else None

    @property
    def train_size(self) -> float:
        """Sort key for training-set size: examples when known, else the fraction (None is all data)."""
        if self.train_examples is not None:
            return float(self.train_examples)
        return self.axes["fraction"] if self.axes["fraction"] is not None else 1.0

    def without(self, *paths: str) -> str:
        """The cell's params with some dotted fields removed: a key for grouping cells along those axes."""
        params = json.loads(json.dumps(self.params))
        for path in paths:
            node = params
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.get(part, {})
            node.pop(leaf, None)
        return json.dumps(params, sort_keys=True)


SEED_FIELDS = ("data.seed", "training.seed")


def task_metrics(task: str, cell: CellResult | None) -> list[str]:
    """A task's metrics as the report shows them, the headline first; a generation study's from its cells'
    eval.metrics (`cell`: any evaluated cell of the task)."""
    if task in PRIMARY:
        return [PRIMARY[task], *SECONDARY[task]]
    from tunebench.config.schema import EvalConfig
    from tunebench.config.tasks import metric_outputs

    eval_cfg = EvalConfig.model_validate((cell.params.get("eval") or {}) if cell else {})
    return metric_outputs(eval_cfg)[:1 + SHOWN_BESIDE]


def primary_of(task: str, entry: Entry) -> str:
    return task_metrics(task, entry.first)[0]


@dataclass
class Value:
    """A number as the report shows it: with its interval and n, or mean ± std over seeds."""

    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None
    seeds: int = 1
    std: float | None = None

    def text(self, scale: float = 1.0, digits: int = 1) -> str:
        v = self.value * scale
        if self.seeds > 1:
            n = f", n={self.n} each" if self.n else ""
            return f"{v:.{digits}f} ± {(self.std or 0) * scale:.{digits}f} ({self.seeds} seeds{n})"
        ci = (f" [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"
              if self.low is not None and self.high is not None else " [no CI]")
        return f"{v:.{digits}f}{ci} n={self.n if self.n is not None else '?'}"


@dataclass
class Entry:
    """Cells that differ only in seeds."""

    cells: list[CellResult]

    @property
    def first(self) -> CellResult:
        return self.cells[0]

    def value(self, name: str, stage: str = "eval") -> Value | None:
        metrics = [c.metric(name, stage) for c in self.cells if c.done(stage)]
        metrics = [m for m in metrics if m is not None and m.value is not None]
        if not metrics:
            return None
        if len(metrics) == 1:
            m = metrics[0]
            return Value(m.value, m.ci_low, m.ci_high, m.n)
        values = [m.value for m in metrics]
        return Value(statistics.fmean(values), n=metrics[0].n, seeds=len(values), std=statistics.stdev(values))

    def cost(self, stage: str, key: str) -> float | None:
        values = [c.costs[stage][key] for c in self.cells if stage in c.costs and c.costs[stage].get(key) is not None]
        return statistics.fmean(values) if values else None

    @property
    def ids(self) -> str:
        return ", ".join(c.id for c in self.cells)


def scale_of(name: str) -> float:
    return 100.0 if name in PERCENT else 1.0


def fmt(value: Value | None, name: str) -> str:
    return value.text(scale_of(name)) if value is not None else "–"


# ---------------------------------------------------------------- loading


@dataclass
class StudyResults:
    study: dict[str, Any]
    cells: list[CellResult]
    inference: list[dict[str, Any]]
    provenance: list[dict[str, Any]]
    left_out: int = 0     # cells in the store that the study file no longer has
    predictions: dict[str, Path] = field(default_factory=dict)   # cell id -> its eval predictions.jsonl

    def metrics(self, task: str) -> list[str]:
        """The task's headline metric first, then those shown beside it (`task_metrics`)."""
        return task_metrics(task, next((c for c in self.cells if c.task == task), None))

    def primary(self, task: str) -> str:
        return self.metrics(task)[0]

    def secondary(self, task: str) -> list[str]:
        return self.metrics(task)[1:]

    def tasks(self) -> list[str]:
        return sorted({c.task for c in self.cells}, key=lambda t: list(PRIMARY).index(t) if t in PRIMARY else 9)

    def models(self, task: str) -> list[str]:
        """The report's rows for a task: one per model, a preset's -instruct variant in its base's row."""
        return list(dict.fromkeys(self.row_of(c.model, task) for c in self.cells if c.task == task))

    def row_of(self, model: str, task: str) -> str:
        """The original prompted the Instruct variants and fine-tuned the Base ones: one row for both."""
        base = model.removesuffix("-instruct")
        if base != model and any(c.model == base and c.task == task for c in self.cells):
            return base
        return model

    def entries(self, task: str) -> list[Entry]:
        """Seed groups of the task's evaluated cells, in study order."""
        groups: dict[str, list[CellResult]] = {}
        for cell in self.cells:
            if cell.task == task and cell.done("eval"):
                groups.setdefault(cell.without(*SEED_FIELDS), []).append(cell)
        return [Entry(cells) for cells in groups.values()]


def load_results(store: Store) -> StudyResults:
    study = (store.rows("SELECT * FROM study") or [{"name": store.study_dir.name, "description": ""}])[0]
    cells: dict[str, CellResult] = {}
    for row in store.rows("SELECT * FROM cells WHERE in_study = 1 ORDER BY added, rowid"):
        axes = {k: row[k] for k in ("model", "method", "task", "fraction", "count", "lora_r", "lora_alpha",
                                    "lora_dropout", "epochs", "seed")}
        cells[row["cell_id"]] = CellResult(row["cell_id"], axes, json.loads(row["params"]), row["train_run"],
                                           row["epoch"])
    for row in store.rows("SELECT * FROM stages"):
        if row["cell_id"] in cells:
            cells[row["cell_id"]].stages[row["stage"]] = row
    for row in store.rows("SELECT * FROM metrics"):
        if row["cell_id"] in cells:
            cells[row["cell_id"]].metrics[row["stage"]][row["name"]] = Metric(
                row["name"], row["value"], row["ci_low"], row["ci_high"], row["n"])
    for row in store.rows("SELECT * FROM costs"):
        if row["cell_id"] in cells:
            cells[row["cell_id"]].costs[row["stage"]] = row
    left_out = store.rows("SELECT COUNT(*) AS n FROM cells WHERE in_study = 0")[0]["n"]
    predictions = {row["cell_id"]: store.study_dir / row["path"] for row in store.rows(
        "SELECT cell_id, path FROM artifacts WHERE stage = 'eval' AND kind = 'predictions'") if row["cell_id"] in cells}
    return StudyResults(study, list(cells.values()), store.rows("SELECT * FROM inference"),
                        [p for p in store.rows("SELECT * FROM provenance") if p["cell_id"] in cells], left_out,
                        predictions)
