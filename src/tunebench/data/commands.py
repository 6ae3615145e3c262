"""`tunebench data show SOURCE`: what a source holds and what a cell would use of it."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import typer
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tunebench import terminal
from tunebench.errors import UserError

if TYPE_CHECKING:
    from tunebench.config.schema import CellConfig, DataConfig, ModelConfig
    from tunebench.data.loader import LoadedSource
    from tunebench.data.records import TaskData
    from tunebench.data.sources import RawSplit
    from tunebench.models.loading import ModelSource
    from tunebench.prompts import Prompt

STRIPPABLE = ("headers", "footers", "quotes")
SOURCE_HELP = ("builtin:classification, builtin:summarization, a JSONL/CSV/Parquet file, a directory with one "
               "file per split, or a hub dataset id (e.g. samsum)")


def parse_columns(items: list[str]) -> dict[str, str]:
    columns: dict[str, str] = {}
    for item in items:
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise UserError(f"--column '{item}' is not of the form NAME=COLUMN", "e.g. --column text=body")
        columns[name.strip()] = column.strip()
    return columns


def parse_strip(value: str | None) -> dict[str, bool]:
    parts = [p.strip() for p in (value or "").split(",") if p.strip()]
    for part in parts:
        if part not in STRIPPABLE:
            raise UserError(f"--strip: unknown part '{part}'", f"allowed: {', '.join(STRIPPABLE)} (comma-separated)")
    return {f"strip_{part}": part in parts for part in STRIPPABLE}


def infer_task(source: str, columns: dict[str, str], raw: dict[str, RawSplit]) -> str:
    """The task a source is for: its built-in name, the mapped fields, else the columns it has."""
    if source.startswith("builtin:"):
        from tunebench.data.sources import BUILTIN_TASKS

        return BUILTIN_TASKS.get(source.removeprefix("builtin:"), source.removeprefix("builtin:"))
    if {"dialogue", "summary"} & set(columns):
        return "summarization"
    if {"text", "label"} & set(columns):
        return "classification"
    present = set(next(iter(raw.values())).columns)
    return "summarization" if {"dialogue", "summary"} <= present else "classification"


def data_config(fields: dict[str, Any]) -> DataConfig:
    from tunebench.config.schema import CellConfig
    from tunebench.config.study import validated

    # Validated inside a cell so that messages name the full path (data.train_fraction).
    return validated(CellConfig, {"data": fields}, "tunebench data show").data


def cell_config(model: str, method: str, data: dict[str, Any], sets: list[str]) -> CellConfig:
    """The options as a cell, with `--set` applied last (any field: prompt.zero_shot, data.validation_size...)."""
    from tunebench.config.schema import CellConfig
    from tunebench.config.study import check_path, parse_set, validated, with_values

    overrides = parse_set(sets)
    for key in overrides:
        check_path(key, where="--set")
    base = {"model": {"name": model}, "method": method, "data": data}
    return validated(CellConfig, with_values(base, overrides), "tunebench data show")


def tokenizer_of(model: ModelConfig) -> tuple[ModelSource, Any]:
    from tunebench.models.loading import load_tokenizer, resolve

    source = resolve(model)
    return source, load_tokenizer(source, model)


def shorten(text: str, width: int = 110) -> str:
    flat = text.replace("\n", " ⏎ ")
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def stats_cell(stats: dict[str, Any]) -> str:
    return f"{stats['mean']:.0f} / {stats['p50']} / {stats['p90']} / {stats['max']}"


def splits_table(loaded: LoadedSource, names: list[str], tokenizer: Any) -> Table:
    from tunebench.data.lengths import length_stats, token_lengths

    table = Table(title=f"{loaded.source} ({loaded.task})", title_justify="left")
    for column in ("split", "rows", "dropped", "input tokens mean/p50/p90/max", "target tokens mean/p50/p90/max"):
        table.add_column(column, overflow="fold")
    for name in names:
        examples = loaded.splits[name]
        inputs = length_stats(token_lengths(tokenizer, [ex.input for ex in examples]))
        targets = length_stats(token_lengths(tokenizer, [ex.target for ex in examples]))
        dropped = sum(loaded.dropped_by_split.get(name, Counter()).values())
        table.add_row(name, str(len(examples)), str(dropped), stats_cell(inputs), stats_cell(targets))
    return table


def labels_table(loaded: LoadedSource, names: list[str]) -> Table:
    table = Table(title="label distribution", title_justify="left")
    table.add_column("label")
    counts = {name: Counter(ex.target for ex in loaded.splits[name]) for name in names}
    for name in names:
        table.add_column(name, justify="right")
    for label in loaded.labels or []:
        table.add_row(label, *(str(counts[name][label]) for name in names))
    return table


def dropped_table(loaded: LoadedSource) -> Table:
    names = list(loaded.dropped_by_split)
    table = Table(title="dropped rows by reason", title_justify="left")
    table.add_column("reason")
    for name in names:
        table.add_column(name, justify="right")
    for reason in sorted(loaded.dropped):
        table.add_row(reason, *(str(loaded.dropped_by_split[name][reason]) for name in names))
    return table


def rows_table(loaded: LoadedSource, names: list[str], n_rows: int) -> Table:
    table = Table(title=f"first {n_rows} row(s) per split, after cleaning", title_justify="left")
    for column in ("split", "id", "input", "target"):
        table.add_column(column, overflow="fold")
    for name in names:
        for ex in loaded.splits[name][:n_rows]:
            table.add_row(name, ex.id, shorten(ex.input), shorten(ex.target, 80))
    return table


def usage_line(data: TaskData, cfg: DataConfig, eval_split: str) -> str:
    size = (f"fraction {cfg.train_fraction}" if cfg.train_fraction is not None
            else f"count {cfg.train_count}" if cfg.train_count is not None else "all")
    used = data.report.used
    return (f"a cell uses (seed {cfg.seed}): train {used['train']} ({size}), validation {used['validation']} "
            f"({data.report.validation_from}), test {used['test']} "
            f"({data.report.eval_from or f'split {eval_split!r}'}); data hash {data.data_hash}")


def prompt_panel(prompt: Prompt, method: str) -> Panel:
    notes = ", truncated to fit the context" if prompt.truncated else ""
    title = f"{method} prompt for {prompt.example_id} ({prompt.n_tokens} tokens{notes})"
    body = Text(prompt.text) if not prompt.skipped else Text("skipped: it does not fit the context", style="red")
    return Panel(body, title=title, title_align="left")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Look at data sources: splits, labels, token lengths, dropped rows.",
                           no_args_is_help=True)
    app.add_typer(data_app, name="data")

    @data_app.command("show")
    def show(
        source: str = typer.Argument(..., help=SOURCE_HELP),
        task: str | None = typer.Option(None, "--task",
                                        help="classification | summarization | generation (default: inferred)"),
        split: str | None = typer.Option(None, "--split", help="show only this split"),
        limit: int | None = typer.Option(None, "--limit", min=1, help="read at most N rows per split"),
        tokenizer: str = typer.Option("smollm2-135m-instruct", "--tokenizer",
                                      help="model (preset, hub id or path) whose tokenizer counts and renders"),
        columns: list[str] = typer.Option([], "--column", help="map a field to a column: text=body (repeatable)"),
        strip: str | None = typer.Option(None, "--strip", help="newsgroup cleaning: headers,footers,quotes"),
        max_input_tokens: int | None = typer.Option(None, "--max-input-tokens", help="truncate inputs"),
        fraction: float | None = typer.Option(None, "--fraction", help="preview data.train_fraction"),
        count: int | None = typer.Option(None, "--count", help="preview data.train_count"),
        seed: int = typer.Option(0, "--seed", help="data.seed for the preview"),
        method: str = typer.Option("zero_shot", "--method", help="render a prompt for this method"),
        rows: int = typer.Option(3, "--rows", min=0, help="rows to print per split"),
        sets: list[str] = typer.Option([], "--set", help="set any study field, e.g. --set prompt.few_shot_examples=2"),
    ) -> None:
        """Rows per split, label distribution, token lengths, dropped rows, a few rows and a rendered prompt."""
        from tunebench.data.loader import carves_eval, load_source, read_raw, task_data
        from tunebench.prompts import PromptBuilder

        mapping = parse_columns(columns)
        fields = {"source": source, "columns": mapping, "train_fraction": fraction, "train_count": count,
                  "seed": seed, "cleaning": {**parse_strip(strip), "max_input_tokens": max_input_tokens}}
        probe = data_config({**fields, "columns": {k: v for k, v in mapping.items() if k in ("id", "split")}})
        raw = read_raw(probe, limit=limit)
        cell = cell_config(tokenizer, method, {**fields, "task": task or infer_task(source, mapping, raw)}, sets)
        # The model (for its tokenizer) loads once the data is known to be good, unless truncation needs it first.
        early = tokenizer_of(cell.model) if cell.data.cleaning.max_input_tokens else None
        same_rows = (cell.data.source, cell.data.columns.get("split")) == (probe.source, probe.columns.get("split"))
        loaded = load_source(cell.data, early[1] if early else None, raw=raw if same_rows else None, limit=limit)
        if split is not None:
            loaded.split(split, "--split")  # names the splits there are when it is not one of them
        names = [split] if split else list(loaded.splits)
        eval_split = (cell.data.eval_split if cell.data.eval_split in loaded.splits
                      or carves_eval(loaded, cell.data, cell.data.eval_split) else "validation")
        data = task_data(loaded, cell.data, eval_split)
        model_source, tok = early or tokenizer_of(cell.model)
        builder = PromptBuilder.for_cell(cell, tok, data, model_source)
        prompt = builder.for_method(cell.method, (data.test or data.train)[0])  # a tiny source may carve none
        console = terminal.console()
        console.print(splits_table(loaded, names, tok))
        console.print(usage_line(data, cell.data, eval_split))
        if loaded.labels:
            console.print(labels_table(loaded, names))
        console.print(dropped_table(loaded) if loaded.dropped else "dropped rows: none")
        if cell.data.cleaning.max_input_tokens is not None:
            console.print(f"inputs truncated to {cell.data.cleaning.max_input_tokens} tokens: "
                          f"{loaded.truncated_inputs}")
        if rows:
            console.print(rows_table(loaded, names, rows))
        console.print(prompt_panel(prompt, cell.method))
