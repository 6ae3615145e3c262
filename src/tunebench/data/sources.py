"""Reading a data source into raw tables, one per split, before any mapping or cleaning.

A source is one of:

- `builtin:classification` / `builtin:summarization`: the samples shipped in `data/builtin/`;
- a local directory holding one file per split, named after it: `train.jsonl`, `test.csv`, `validation.parquet`;
- a local JSONL, CSV or Parquet file: its `split` column (or the column data.columns maps `split` to) assigns
  rows to splits; without one the whole file is the train split, and data.eval_split / data.validation_split
  may name further files (`eval_split: data/test.csv`);
- anything else is a Hugging Face hub dataset id (`samsum`, `rungalileo/20_Newsgroups_Fixed`), read with
  `datasets.load_dataset`; its splits are the dataset's.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tunebench.errors import UserError, did_you_mean

BUILTIN_PREFIX = "builtin:"
BUILTINS = ("classification", "summarization", "extraction")
# The task each built-in sample is for (extraction: short messages -> their fields as JSON).
BUILTIN_TASKS = {"classification": "classification", "summarization": "summarization", "extraction": "generation"}
FILE_SUFFIXES = (".jsonl", ".csv", ".parquet")
PATH_SUFFIXES = (*FILE_SUFFIXES, ".json", ".tsv", ".txt")   # what only a file would be called
DEFAULT_HUB_SOURCES = {"classification": "rungalileo/20_Newsgroups_Fixed", "summarization": "samsum"}


@dataclass
class RawSplit:
    origin: str  # where the rows came from, for messages: a file path or "hub dataset 'x', split 'y'"
    rows: list[dict[str, Any]]
    columns: list[str]  # the columns present in the source


def builtin_path(name: str) -> Path:
    if name not in BUILTINS:
        raise UserError(f"unknown built-in data set 'builtin:{name}'",
                        did_you_mean(f"builtin:{name}", [f"builtin:{b}" for b in BUILTINS]))
    return Path(str(resources.files("tunebench.data") / "builtin" / f"{name}.jsonl"))


def is_local(source: str, base: Path | None = None) -> bool:
    """A path rather than a hub id: it exists, looks like one (./ / ~ or a data-file suffix), or its first
    component is a local directory (`data/reviews` next to a `data/` folder is not the hub's 'data' user)."""
    if source.startswith(BUILTIN_PREFIX):
        return False
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or path.suffix.lower() in PATH_SUFFIXES:
        return True
    first = Path(source).parts[0] if Path(source).parts else ""
    return len(Path(source).parts) > 1 and any((root / first).is_dir() for root in (base or Path.cwd(), Path.cwd()))


def resolve_local(source: str, base: Path) -> str:
    """A relative local source, resolved against `base` (the study file's folder): the file sits beside the
    study, wherever the command runs. Falls back to the working directory only where that copy exists."""
    if not is_local(source, base):
        return source
    path = Path(source).expanduser()
    if path.is_absolute():
        return str(path)
    beside = (base / path).resolve()
    return str(beside if beside.exists() or not path.exists() else path.resolve())


def read_source(source: str, *, split_column: str = "split", split_column_required: bool = False,
                split_files: tuple[str, ...] = (), limit: int | None = None) -> dict[str, RawSplit]:
    """Every split of `source` as raw rows; `split_files` are split names that are paths to extra files."""
    if source.startswith(BUILTIN_PREFIX):
        splits = read_single_file(builtin_path(source.removeprefix(BUILTIN_PREFIX)), split_column, False)
    elif is_local(source):
        splits = read_local(Path(source).expanduser(), split_column, split_column_required, split_files)
    else:
        splits = read_hub(source)
    if limit is not None:
        splits = {name: RawSplit(raw.origin, raw.rows[:limit], raw.columns) for name, raw in splits.items()}
    return splits


# ---------------------------------------------------------------- local files


def read_local(path: Path, split_column: str, split_column_required: bool,
               split_files: tuple[str, ...]) -> dict[str, RawSplit]:
    if not path.exists():
        raise UserError(f"data source not found: {path.resolve()}",
                        "give an existing JSONL/CSV/Parquet file or directory, a hub dataset id, or "
                        + " / ".join(f"builtin:{b}" for b in BUILTINS))
    if path.is_dir():
        return read_directory(path)
    splits = read_single_file(path, split_column, split_column_required)
    for name in split_files:
        extra = resolve_split_file(name, path)
        splits[name] = read_table(extra)
    return splits


def resolve_split_file(name: str, source: Path) -> Path:
    for candidate in (Path(name).expanduser(), source.parent / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"split file not found: {name} (looked as given and next to {source})",
                    "give the path of an existing JSONL/CSV/Parquet file")


def read_directory(path: Path) -> dict[str, RawSplit]:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
    if not files:
        raise UserError(f"data directory {path} has no .jsonl, .csv or .parquet files",
                        "name one file per split after it: train.jsonl, test.jsonl (validation.jsonl optional)")
    splits: dict[str, RawSplit] = {}
    for file in files:
        if file.stem in splits:
            raise UserError(f"data directory {path} has two files for split '{file.stem}'",
                            f"keep one of {splits[file.stem].origin} and {file}")
        splits[file.stem] = read_table(file)
    return splits


def read_single_file(path: Path, split_column: str, split_column_required: bool) -> dict[str, RawSplit]:
    table = read_table(path)
    if split_column not in table.columns:
        if split_column_required:
            raise missing_column(table, split_column, "split")
        return {"train": table}
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in table.rows:
        grouped[str(row.get(split_column) or "").strip() or "(no split)"].append(row)
    return {name: RawSplit(f"{path} (split '{name}')", rows, table.columns) for name, rows in grouped.items()}


def missing_column(table: RawSplit, column: str, field: str) -> UserError:
    present = ", ".join(table.columns) or "none"
    return UserError(f"{table.origin}: no column '{column}' (data.columns.{field} maps '{field}' to it)",
                     f"set data.columns.{field} to one of the columns present: {present}")


def read_table(path: Path) -> RawSplit:
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise UserError(f"unsupported data file type '{path.suffix}': {path}",
                        "use a .jsonl, .csv or .parquet file (or a directory of them, one per split)")
    reader = {".jsonl": read_jsonl, ".csv": read_csv, ".parquet": read_parquet}[suffix]
    try:
        rows, columns = reader(path)
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start})", "re-save the file as UTF-8") from None
    if not rows:
        raise UserError(f"{path} has no rows", "give a file with at least a header and one row")
    return RawSplit(str(path), rows, columns)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}, line {number}: not valid JSON ({err.msg}, column {err.colno})",
                                "fix or delete that line: each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object",
                                'each line must be one JSON object, e.g. {"text": "...", "label": "..."}')
            rows.append(row)
            columns.update(dict.fromkeys(row))
    return rows, list(columns)


def read_csv(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        # Cells come back as strings; a short row leaves its missing cells None (dropped as "missing").
        rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
        return rows, list(reader.fieldnames or [])


def read_parquet(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise UserError(f"{path} is not a readable Parquet file ({err})", "re-export it as Parquet") from None
    return table.to_pylist(), list(table.column_names)


# ---------------------------------------------------------------- the hub


def read_hub(dataset_id: str) -> dict[str, RawSplit]:
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id)
    except (OSError, ValueError) as err:
        raise hub_error(dataset_id, err) from None
    return splits_from_dataset_dict(loaded, dataset_id)


def hub_error(dataset_id: str, err: Exception) -> UserError:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return UserError(
        f"cannot load dataset '{dataset_id}' from the Hugging Face hub: {reason}",
        f"on a connected machine export its splits, e.g. load_dataset('{dataset_id}')['train'].to_json("
        "'mydata/train.jsonl') and the same for test, then set data.source: mydata (a directory with one "
        "file per split, or one JSONL/CSV/Parquet file); or use builtin:classification / builtin:summarization",
    )


def splits_from_dataset_dict(loaded: Any, dataset_id: str) -> dict[str, RawSplit]:
    """Rows of every split of a `datasets.DatasetDict`, with class-label ids turned into their names."""
    import datasets

    splits: dict[str, RawSplit] = {}
    for name, split in loaded.items():
        rows = split.to_list()
        for column, feature in split.features.items():
            if isinstance(feature, datasets.ClassLabel):
                for row in rows:
                    if isinstance(row.get(column), int) and row[column] >= 0:
                        row[column] = feature.int2str(row[column])
        splits[name] = RawSplit(f"hub dataset '{dataset_id}', split '{name}'", rows, list(split.column_names))
    return splits
