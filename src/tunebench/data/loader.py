"""From a `data:` section to a task's examples: read, map columns, drop bad rows, clean, sample, split.

    source ──read──> raw splits ──map columns, drop bad rows, clean──> LoadedSource
           ──carve validation, sample train, pick the eval split──> TaskData

Bad rows (a missing, empty or non-string field; a label outside the training split's label set) are
dropped and counted by reason, never silently; a split left empty is an error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebench.data.cleaning import clean_input, clean_target, truncate_texts
from tunebench.data.records import COMMON_FIELDS, Example, LoadReport, TaskData, data_fields, data_hash
from tunebench.data.sampling import (
    carve_eval,
    carve_validation,
    in_source_order,
    permuted_strata,
    sample_count,
    sample_fraction,
)
from tunebench.data.sources import BUILTIN_PREFIX, FILE_SUFFIXES, RawSplit, is_local, missing_column, read_source
from tunebench.errors import UserError, did_you_mean

log = logging.getLogger("tunebench.data")

if TYPE_CHECKING:
    from tunebench.config.schema import DataConfig

LABEL_NOT_IN_SET = "label not in label set"


@dataclass
class LoadedSource:
    """Every split of a source after mapping, dropping and cleaning, before sampling."""

    source: str
    task: str
    splits: dict[str, list[Example]]
    labels: list[str] | None
    origins: dict[str, str] = field(default_factory=dict)  # split -> where its rows came from
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_by_split: dict[str, Counter[str]] = field(default_factory=dict)
    truncated_inputs: int = 0
    folded_labels: dict[str, str] = field(default_factory=dict)  # spelling -> the one it was merged into

    def split(self, name: str, role: str) -> list[Example]:
        if name not in self.splits:
            raise UserError(f"{self.source}: no split '{name}' (given as {role})",
                            f"{did_you_mean(name, list(self.splits))}; set {role} to one of them")
        return self.splits[name]


def column_mapping(cfg: DataConfig) -> dict[str, str]:
    """tunebench field -> source column, defaults filled in (each field reads the column of its own name)."""
    inputs, target = data_fields(cfg)
    allowed = (*inputs, target, *COMMON_FIELDS)
    task, columns = cfg.task, cfg.columns
    for name in columns:
        if name not in allowed:
            raise UserError(f"data.columns: '{name}' is not a field of the {task} task",
                            f"{did_you_mean(name, list(allowed))}; map tunebench names to source columns, "
                            f"e.g. columns: {{{allowed[0]}: body}}")
    return {name: columns.get(name, name) for name in allowed}


def split_files(cfg: DataConfig, eval_split: str | None) -> tuple[str, ...]:
    names = (cfg.eval_split, eval_split, cfg.validation_split)
    return tuple(dict.fromkeys(n for n in names if n and Path(n).suffix.lower() in FILE_SUFFIXES))


def read_raw(cfg: DataConfig, eval_split: str | None = None, limit: int | None = None) -> dict[str, RawSplit]:
    """The source's splits as raw rows; `limit` keeps the first rows of each split (for a quick look)."""
    columns = column_mapping(cfg)
    return read_source(cfg.source, split_column=columns["split"], split_column_required="split" in cfg.columns,
                       split_files=split_files(cfg, eval_split), limit=limit)


def load_source(cfg: DataConfig, tokenizer: Any = None, *, eval_split: str | None = None, limit: int | None = None,
                raw: dict[str, RawSplit] | None = None) -> LoadedSource:
    """Every split of `cfg.source` mapped, cleaned and checked (`raw`: splits already read by `read_raw`)."""
    columns = column_mapping(cfg)
    raw = raw if raw is not None else read_raw(cfg, eval_split, limit)
    loaded = LoadedSource(cfg.source, cfg.task, {}, None)
    for name, table in raw.items():
        loaded.origins[name] = table.origin
        loaded.splits[name] = examples_of(table, name, columns, cfg, loaded)
    if cfg.task == "classification":
        fold_or_warn_labels(loaded, cfg)
        loaded.labels = label_set(loaded, cfg.train_split)
        keep_known_labels(loaded, cfg.train_split)
    if cfg.cleaning.max_input_tokens is not None:
        truncate_inputs(loaded, tokenizer, cfg.cleaning.max_input_tokens)
    return loaded


def examples_of(table: RawSplit, split: str, columns: dict[str, str], cfg: DataConfig,
                loaded: LoadedSource) -> list[Example]:
    inputs, target_field = data_fields(cfg)
    input_field = inputs[0]
    for name in (*inputs, target_field) + (("id",) if "id" in cfg.columns else ()):
        if columns[name] not in table.columns:
            if cfg.task == "generation" and name not in cfg.columns:
                role = "data.target" if name == target_field else "data.inputs"
                present = ", ".join(table.columns) or "none"
                raise UserError(f"{table.origin}: no column '{name}' (the generation task's "
                                f"{'target' if name == target_field else 'input'} field, {role})",
                                f"set {role} to the column(s) to use; columns present: {present}")
            raise missing_column(table, columns[name], name)
    dropped: Counter[str] = Counter()
    examples = [ex for index, row in enumerate(table.rows)
                if (ex := example_of(row, f"{split}-{index}", columns, cfg, dropped)) is not None]
    record_drops(loaded, split, dropped)
    if not examples:
        reasons = "; ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items()))
        raise UserError(f"{table.origin}: no usable rows left after dropping bad rows ({reasons})",
                        f"check the data, and that data.columns maps {input_field} -> '{columns[input_field]}' "
                        f"and {target_field} -> '{columns[target_field]}' to the right columns")
    return examples


def example_of(row: dict[str, Any], default_id: str, columns: dict[str, str], cfg: DataConfig,
               dropped: Counter[str]) -> Example | None:
    """The row as a cleaned example, or None with the reason counted in `dropped`."""
    inputs, target_field = data_fields(cfg)
    values: list[str] = []
    for name in inputs:
        value = field_value(row, columns[name], name, dropped, json_ok=False)
        if value is None:
            return None
        values.append(clean_input(value, cfg.cleaning))
    # A generation target may be a JSON object or list in a JSONL file: compared as JSON, kept as its text.
    target = field_value(row, columns[target_field], target_field, dropped, json_ok=cfg.task == "generation")
    if target is None:
        return None
    target = clean_target(target, cfg.cleaning)
    empty = next((name for name, value in zip((*inputs, target_field), (*values, target), strict=True)
                  if not value), None)
    if empty is not None:
        dropped[f"empty {empty}"] += 1
        return None
    row_id = row.get(columns["id"])
    return Example(str(row_id) if row_id not in (None, "") else default_id, values[0], target,
                   tuple(zip(inputs[1:], values[1:], strict=True)))


def field_value(row: dict[str, Any], column: str, name: str, dropped: Counter[str], *,
                json_ok: bool = False) -> str | None:
    value = row.get(column)
    if value is None:
        dropped[f"missing {name}"] += 1
        return None
    if json_ok and isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        dropped[f"non-string {name}"] += 1
        return None
    return value


def record_drops(loaded: LoadedSource, split: str, dropped: Counter[str]) -> None:
    loaded.dropped.update(dropped)
    loaded.dropped_by_split.setdefault(split, Counter()).update(dropped)


def fold_or_warn_labels(loaded: LoadedSource, cfg: DataConfig) -> None:
    """'Sports', 'sports' and 'sports' in another Unicode form would silently be three classes: merge them into
    the most frequent spelling (data.cleaning.fold_labels), or say so."""
    from tunebench.data.cleaning import label_variants

    counts = Counter(ex.target for split in loaded.splits.values() for ex in split)
    variants = label_variants(counts)
    if not variants:
        return
    def shown(label: str) -> str:  # two Unicode forms print alike: show their code points too
        return repr(label) if label.isascii() else f"{label!r} = {label!a}"

    described = "; ".join(" / ".join(f"{shown(s)} ({counts[s]} rows)" for s in spellings)
                          for spellings in variants.values())
    if not cfg.cleaning.fold_labels:
        log.warning("%s: labels that differ only by case, whitespace or Unicode form are separate classes: %s; "
                    "set data.cleaning.fold_labels: true to merge each group into its most frequent spelling",
                    loaded.source, described)
        return
    canonical = {s: spellings[0] for spellings in variants.values() for s in spellings}
    for name, split in loaded.splits.items():
        loaded.splits[name] = [dataclasses.replace(ex, target=canonical.get(ex.target, ex.target)) for ex in split]
    loaded.folded_labels = {s: c for s, c in canonical.items() if s != c}
    log.info("%s: merged labels %s", loaded.source, described)


def label_set(loaded: LoadedSource, train_split: str) -> list[str]:
    labels = sorted({ex.target for ex in loaded.split(train_split, "data.train_split")})
    if len(labels) < 2:
        raise UserError(f"{loaded.origins[train_split]}: the training split has a single label {labels[0]!r}",
                        "classification needs at least two classes; check that data.columns.label maps the "
                        "label column")
    return labels


def keep_known_labels(loaded: LoadedSource, train_split: str) -> None:
    known = set(loaded.labels or ())
    for name, examples in loaded.splits.items():
        if name == train_split:
            continue
        kept = [ex for ex in examples if ex.target in known]
        if len(kept) < len(examples):
            record_drops(loaded, name, Counter({LABEL_NOT_IN_SET: len(examples) - len(kept)}))
        if not kept:
            raise UserError(f"{loaded.origins[name]}: none of its labels occur in the training split",
                            f"the label set comes from the training split: {', '.join(sorted(known))}")
        loaded.splits[name] = kept


def truncate_inputs(loaded: LoadedSource, tokenizer: Any, max_tokens: int) -> None:
    if tokenizer is None:
        raise ValueError("data.cleaning.max_input_tokens is set: pass the model's tokenizer to count tokens")
    for name, examples in loaded.splits.items():
        texts, cut = truncate_texts(tokenizer, [ex.input for ex in examples], max_tokens)
        loaded.splits[name] = [replace(ex, input=text) for ex, text in zip(examples, texts, strict=True)]
        loaded.truncated_inputs += sum(cut)


# ---------------------------------------------------------------- the task's data


def load_task_data(cfg: DataConfig, tokenizer: Any = None, eval_split: str | None = None) -> TaskData:
    """The examples one cell uses: the sampled training set, validation, and the eval split.

    `eval_split` (eval.split) overrides data.eval_split. Validation is data.validation_split when given,
    else the source's 'validation' split when it has one, else carved from the training split. Evaluating
    on 'validation' when the source has none evaluates on the carved split.
    """
    return task_data(load_source(cfg, tokenizer, eval_split=eval_split), cfg, eval_split)


def task_data(loaded: LoadedSource, cfg: DataConfig, eval_split: str | None = None) -> TaskData:
    """Validation, the sampled training set and the eval split, from splits already loaded."""
    train_all = loaded.split(cfg.train_split, "data.train_split")
    stratum = (lambda ex: ex.target) if cfg.task == "classification" else (lambda ex: "")
    eval_name = eval_split or cfg.eval_split
    carved_eval: list[Example] | None = None
    if carves_eval(loaded, cfg, eval_name):
        carved_eval, train_all = carve_eval(train_all, stratum, cfg.seed, cfg.eval_size,
                                            loaded.origins.get(cfg.train_split, loaded.source))
    strata = permuted_strata(train_all, stratum, cfg.seed)
    validation_name = validation_split_name(loaded, cfg)
    if validation_name is not None:
        validation = loaded.split(validation_name, "data.validation_split")
        remaining, validation_from = strata, f"source split '{validation_name}'"
    else:
        carved, remaining = carve_validation(strata, cfg.validation_size)
        validation, validation_from = in_source_order(carved, train_all), "carved from train"
    train = in_source_order(sampled(remaining, cfg, carved=len(train_all) - sum(map(len, remaining.values()))),
                            train_all)
    test = carved_eval if carved_eval is not None else eval_examples(loaded, eval_name, validation_name,
                                                                      validation)
    used = {"train": len(train), "validation": len(validation), "test": len(test)}
    report = LoadReport(loaded.source, {name: len(split) for name, split in loaded.splits.items()},
                        dict(loaded.dropped), loaded.truncated_inputs, used, validation_from)
    if carved_eval is not None:
        per = "per class, " if cfg.task == "classification" else ""
        report.eval_from = f"carved from '{cfg.train_split}' ({cfg.eval_size:g} {per}seed {cfg.seed})"
        report.eval_ids = [ex.id for ex in carved_eval]
    return TaskData(cfg.task, loaded.labels, train, validation, test, report, data_hash(train, validation, test))


def carves_eval(loaded: LoadedSource, cfg: DataConfig, eval_name: str) -> bool:
    """A source without the default 'test' split (a single file) gets one carved from its training split;
    any other missing name stays an error (a typo must not silently evaluate on carved rows)."""
    return eval_name == "test" and "test" not in loaded.splits and cfg.train_split != "test"


def validation_split_name(loaded: LoadedSource, cfg: DataConfig) -> str | None:
    if cfg.validation_split is not None:
        return cfg.validation_split
    return "validation" if "validation" in loaded.splits and cfg.train_split != "validation" else None


def sampled(strata: dict[str, list[Example]], cfg: DataConfig, *, carved: int) -> list[Example]:
    if cfg.train_fraction is not None:
        return sample_fraction(strata, cfg.train_fraction)
    if cfg.train_count is not None:
        note = f" after carving {carved} for validation" if carved else ""
        return sample_count(strata, cfg.train_count, note)
    return [ex for members in strata.values() for ex in members]


def eval_examples(loaded: LoadedSource, name: str, validation_name: str | None,
                  validation: list[Example]) -> list[Example]:
    if name in loaded.splits:
        return loaded.splits[name]
    if name == (validation_name or "validation"):
        return validation
    raise UserError(f"{loaded.source}: no split '{name}' to evaluate on (splits: {', '.join(loaded.splits)})",
                    f"{did_you_mean(name, [*loaded.splits, 'validation'])}; set data.eval_split (or eval.split); "
                    "'validation' evaluates on the validation split carved from train")


def check_local_sources(cells: list[tuple[DataConfig, str | None]]) -> None:
    """Read every local source as its cells will (mapping, cleaning, the carved splits), once per distinct data
    section, so a file that cannot work fails at `tunebench run --dry-run`, not after the first training run.
    Hub datasets are read when a cell runs (checking them here would download them)."""
    seen: set[str] = set()
    for cfg, eval_split in cells:
        if not (cfg.source.startswith(BUILTIN_PREFIX) or is_local(cfg.source)):
            continue
        key = cfg.model_dump_json() + repr(eval_split)
        if key in seen:
            continue
        seen.add(key)
        # token truncation needs the model's tokenizer; it never changes which rows a split holds
        probe = cfg.model_copy(update={"cleaning": cfg.cleaning.model_copy(update={"max_input_tokens": None})})
        task_data(load_source(probe, eval_split=eval_split), probe, eval_split)

