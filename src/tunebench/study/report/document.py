"""The report as a list of blocks, the number formats every section shares, and which entry represents
each (model, method) pair."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.study.results import FINE_TUNED, METHOD_LABEL, METHOD_ORDER, Entry, StudyResults, primary_of

WILSON = "Wilson score interval, honest at 0% and 100%"
BOOTSTRAP = "percentile bootstrap over the examples"


class Intervals(dict):
    """How each headline metric's interval is computed; a user metric's as evaluate.textmetrics does it."""

    def __missing__(self, key: str) -> str:
        return f"{BOOTSTRAP}, Wilson when every value is 0 or 1"


INTERVALS = Intervals({  # how evaluate.metrics / evaluate.textmetrics compute each headline metric's interval
    "accuracy": WILSON, "rouge1": BOOTSTRAP, "exact_match": WILSON, "json_valid": WILSON, "json_exact": WILSON,
    "json_schema_valid": WILSON, "token_f1": BOOTSTRAP, "json_field_accuracy": BOOTSTRAP,
    "bleu": f"{BOOTSTRAP}, the corpus score recomputed", "chrf": f"{BOOTSTRAP}, the corpus score recomputed",
})
INTERVAL_NOTE = ("Accuracy: Wilson score intervals; macro-F1 and ROUGE: percentile bootstrap over the examples, "
                 "which collapses to a point when every example scores the same (e.g. macro-F1 at 100%). "
                 "Generation: exact match and JSON validity Wilson, the others bootstrap (BLEU and chrF: the "
                 "corpus score recomputed per resample).")


# ---------------------------------------------------------------- the document


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str  # Markdown inline: `code` and **bold** only


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


Block = Heading | Para | Table | Figure


@dataclass
class Report:
    title: str
    blocks: list[Block] = field(default_factory=list)
    headline: list[Table] = field(default_factory=list)   # what the terminal shows after `tunebench demo`
    verdicts: list[str] = field(default_factory=list)    # one line per task and model: is fine-tuning better?

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def label(method: str) -> str:
    return METHOD_LABEL.get(method, method)


def money(usd: float | None) -> str:
    if usd is None:
        return "–"
    if usd == 0:
        return "$0"
    if abs(usd) >= 1:
        return f"${usd:,.2f}"
    if abs(usd) >= 0.01:
        return f"${usd:.3f}"
    return f"${usd:.2g}" if abs(usd) >= 1e-5 else f"${usd:.1e}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def count(n: float | None) -> str:
    if n is None:
        return "never"
    return f"{n:,.0f}" if n < 1e6 else f"{n:.3g}"


# ---------------------------------------------------------------- choosing what to compare


def headline_entry(entries: list[Entry], task: str) -> tuple[Entry, int] | None:
    """A method's representative: the most training data, then the best primary metric (of k configs)."""
    if not entries:
        return None
    primary = primary_of(task, entries[0])
    scored = [e for e in entries if e.value(primary) is not None]
    if not scored:
        return None
    most = max(e.first.train_size for e in scored)
    largest = [e for e in scored if e.first.train_size == most]
    best = max(largest, key=lambda e: e.value(primary).value)  # type: ignore[union-attr]
    return best, len(largest)


def by_model_method(results: StudyResults, task: str) -> dict[tuple[str, str], tuple[Entry, int]]:
    grouped: dict[tuple[str, str], list[Entry]] = {}
    for entry in results.entries(task):
        grouped.setdefault((results.row_of(entry.first.model, task), entry.first.method), []).append(entry)
    chosen = {key: headline_entry(entries, task) for key, entries in grouped.items()}
    return {key: value for key, value in chosen.items() if value is not None}


def methods_in(keys: Any) -> list[str]:
    present = {method for _, method in keys}
    return [m for m in METHOD_ORDER if m in present]


def config_note(entry: Entry, of: int) -> str:
    c = entry.first
    parts = []
    if c.method in ("lora", "qlora"):
        parts.append(f"r={c.axes['lora_r']} α={c.axes['lora_alpha']:g} dropout={c.axes['lora_dropout']}")
    if c.method in FINE_TUNED:
        parts.append(f"{c.axes['epochs'] or 'default'} epochs")
        if c.train_examples is not None:
            parts.append(f"{c.train_examples} train examples")
    if of > 1:
        parts.append(f"best of {of} configurations")
    return "; ".join(parts)


def fnum(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"
