"""The records every stage passes around: one example, what the loader did, and a task's data."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# The tunebench names of a task's two fields (input, target); data.columns maps them to source columns.
TASK_FIELDS = {"classification": ("text", "label"), "summarization": ("dialogue", "summary")}
# Fields every task may map besides its own: a row id and, in a single file, the split it belongs to.
COMMON_FIELDS = ("id", "split")
# The generation task names its fields in data.inputs / data.target; these are the defaults (per built-in).
GENERATION_FIELDS = {"": (("input",), "target"), "builtin:extraction": (("message",), "fields")}


def task_fields(task: str) -> tuple[str, str]:
    return TASK_FIELDS[task]


def fields_of(task: str, inputs: list[str] | None = None, target: str | None = None,
              source: str = "") -> tuple[tuple[str, ...], str]:
    """(input fields, target field) of a task; the generation task's come from data.inputs / data.target."""
    if task != "generation":
        input_field, target_field = TASK_FIELDS[task]
        return (input_field,), target_field
    default_inputs, default_target = GENERATION_FIELDS.get(source, GENERATION_FIELDS[""])
    return tuple(inputs or default_inputs), target or default_target


def data_fields(cfg: Any) -> tuple[tuple[str, ...], str]:
    """fields_of for a `data:` section."""
    return fields_of(cfg.task, cfg.inputs, cfg.target, cfg.source)


@dataclass(frozen=True)
class Example:
    id: str
    input: str  # classification: the text; summarization: the dialogue; generation: the first input field
    target: str  # classification: the label; summarization: the reference summary; generation: the target
    # generation with several input fields: the others, (name, value) in data.inputs order
    extra: tuple[tuple[str, str], ...] = ()


@dataclass
class LoadReport:
    source: str
    rows: dict[str, int]  # split name in the source -> rows kept after dropping bad rows
    dropped: dict[str, int]  # reason ("empty dialogue", "label not in label set", ...) -> rows dropped
    truncated_inputs: int  # inputs cut to cleaning.max_input_tokens (among the rows used)
    used: dict[str, int] = field(default_factory=dict)  # "train" / "validation" / "test" -> rows a cell uses
    validation_from: str = ""  # "source split 'validation'" or "carved from train"
    eval_from: str = ""  # "" (a split of the source) or how the evaluation rows were carved from train
    eval_ids: list[str] = field(default_factory=list)  # the carved evaluation rows' ids (recorded in metrics.json)

    def summary(self) -> str:
        used = ", ".join(f"{name} {n}" for name, n in self.used.items())
        dropped = sum(self.dropped.values())
        reasons = "; ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
        carved = f"; test {self.eval_from}" if self.eval_from else ""
        return (f"{self.source}: {used} (validation {self.validation_from}{carved}); dropped {dropped}"
                + (f" ({reasons})" if reasons else "") + f"; truncated inputs {self.truncated_inputs}")


@dataclass
class TaskData:
    task: str  # "classification" | "summarization" | "generation"
    labels: list[str] | None  # sorted label set from the training split (classification)
    train: list[Example]  # after sampling (nested, stratified)
    validation: list[Example]  # from the source, else carved from train (never overlapping train)
    test: list[Example]  # the eval split
    report: LoadReport
    data_hash: str  # sha256 over ids and contents of train/validation/test, first 16 hex digits


def data_hash(train: list[Example], validation: list[Example], test: list[Example]) -> str:
    digest = hashlib.sha256()
    for name, examples in (("train", train), ("validation", validation), ("test", test)):
        for ex in examples:
            # `extra` only when present, so the hashes of one-input data stay what they were
            fields = [name, ex.id, ex.input, ex.target] + ([list(map(list, ex.extra))] if ex.extra else [])
            digest.update(json.dumps(fields).encode())
            digest.update(b"\n")
    return digest.hexdigest()[:16]
