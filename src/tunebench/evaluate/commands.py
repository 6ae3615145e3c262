"""`tunebench eval` and `tunebench merge`."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import typer

from tunebench import terminal
from tunebench.config.schema import ADAPTER_METHODS, CellConfig
from tunebench.errors import UserError
from tunebench.evaluate.runner import eval_split, split_name

SET_HELP = "set any cell field, e.g. --set prompt.few_shot_examples=4 (repeatable)"
TASKS = ("classification", "summarization", "generation")


def eval_cell(*, model: str | None, run_cfg: CellConfig | None, adapter: Path | None, options: dict[str, Any],
              sets: list[str]) -> CellConfig:
    """The cell to evaluate: the run's configuration (or the model's defaults) with the command line on top."""
    from tunebench.config.study import check_path, merge, nested, parse_set, validated

    base = run_cfg.model_dump(mode="json") if run_cfg else {"model": {"name": model}}
    if run_cfg is None:
        options = {**options, "data.task": task_of(options), "method": options.get("method") or (
            "lora" if adapter else "zero_shot")}
        options.setdefault("data.source", f"builtin:{options['data.task']}")
    overrides = parse_set(sets)
    for key in overrides:
        check_path(key, where="--set")
    given = {key: value for key, value in {**options, **overrides}.items() if value is not None}
    return validated(CellConfig, merge(base, nested(given)), "tunebench eval")


def task_of(options: dict[str, Any]) -> str:
    task, source = options.get("data.task"), options.get("data.source")
    if task:
        return task
    if source and source.startswith("builtin:"):
        from tunebench.data.sources import BUILTIN_TASKS

        if source.removeprefix("builtin:") in BUILTIN_TASKS:
            return BUILTIN_TASKS[source.removeprefix("builtin:")]
    raise UserError("tunebench eval needs --task when it evaluates a model without --run",
                    f"add --task {' or --task '.join(TASKS)}")


def default_out(cell: CellConfig) -> Path:
    name = re.sub(r"[^a-z0-9]+", "-", Path(cell.model.name).name.lower()).strip("-")
    return Path("runs") / "eval" / f"{name}-{cell.data.task}" / f"{split_name(eval_split(cell))}-{cell.method}"


def training_labels(run: Any, run_cfg: CellConfig | None, cell: CellConfig, adapter: Path | None,
                    tokenizer: Any) -> list[str] | None:
    """The labels the evaluated model was fine-tuned on: recorded by training, else its training data's."""
    from tunebench.evaluate.loading import recorded_labels, run_label_places

    if cell.data.task != "classification":
        return None
    recorded = recorded_labels(*run_label_places(run, adapter))
    if recorded is not None or run_cfg is None or run_cfg.data == cell.data:
        return recorded
    from tunebench.data import load_task_data

    return load_task_data(run_cfg.data, tokenizer).labels


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        model: str | None = typer.Argument(None, help="model preset, hub id or local path (or use --run)"),
        run: Path | None = typer.Option(None, "--run", help="a cell directory: model, adapter, prompts, labels"),
        adapter: Path | None = typer.Option(None, "--adapter", help="a PEFT adapter directory to apply to MODEL"),
        task: str | None = typer.Option(None, "--task", help="classification | summarization | generation"),
        data: str | None = typer.Option(None, "--data", help="data source: builtin:<task>, a file or directory, "
                                        "or a hub dataset id"),
        split: str | None = typer.Option(None, "--split", help="the split to evaluate (default data.eval_split)"),
        method: str | None = typer.Option(None, "--method", help="zero_shot | few_shot | lora | qlora | full"),
        scoring: str | None = typer.Option(None, "--scoring", help="classification: constrained | generate | "
                                           "loglik"),
        limit: int | None = typer.Option(None, "--limit", help="evaluate a stratified sample of N examples"),
        batch_size: int | None = typer.Option(None, "--batch-size"),
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens"),
        out: Path | None = typer.Option(None, "--out", help="output directory (default: the run's eval/<split>-"
                                        "<method>, else runs/eval/...)"),
        sets: list[str] = typer.Option([], "--set", help=SET_HELP),
    ) -> None:
        """Evaluate zero-shot, few-shot or fine-tuned: predictions.jsonl + metrics.json with 95% CIs."""
        from tunebench.evaluate.loading import load_for_eval
        from tunebench.evaluate.runner import evaluate, text_scorer
        from tunebench.rundir import RunDir

        if (run is None) == (model is None):
            raise UserError("give either MODEL or --run DIR (exactly one)",
                            "tunebench eval --run runs/<study>/<cell>  or  tunebench eval MODEL --task ... --data ...")
        if limit is not None and limit < 1:
            raise UserError(f"--limit {limit}: the limit must be at least 1",
                            "give a positive number of examples, or leave --limit out to evaluate the whole split")
        if adapter is not None and not adapter.is_dir():
            raise UserError(f"--adapter {adapter} is not a directory", "give the PEFT adapter directory")
        run_dir = RunDir(run) if run else None
        run_cfg = run_dir.read_config() if run_dir else None
        options = {"data.task": task, "data.source": data, "eval.split": split, "method": method,
                   "eval.scoring": scoring, "eval.limit": limit, "eval.batch_size": batch_size,
                   "eval.max_new_tokens": max_new_tokens}
        cell = eval_cell(model=model, run_cfg=run_cfg, adapter=adapter, options=options, sets=sets)
        start = time.perf_counter()
        scorer = text_scorer(cell)  # a metric that cannot work fails before the model loads
        loaded = load_for_eval(cell, run_dir, adapter)
        trained = training_labels(run_dir, run_cfg, cell, loaded.adapter, loaded.tokenizer)
        target = out or (run_dir.eval_dir(split_name(eval_split(cell)), cell.method) if run_dir else default_out(cell))
        evaluate(cell, loaded, target, trained_labels=trained, load_seconds=time.perf_counter() - start,
                 scorer=scorer)
        terminal.console().print(f"wrote {target}/predictions.jsonl and metrics.json", highlight=False, soft_wrap=True)

    @app.command()
    def merge(
        run: Path | None = typer.Option(None, "--run", help="a trained LoRA/QLoRA cell directory"),
        adapter: Path | None = typer.Option(None, "--adapter", help="a PEFT adapter directory"),
        out: Path = typer.Option(..., "--out", help="where to write the merged model"),
        dtype: str = typer.Option("bf16", "--dtype", help="bf16 | fp16 | fp32"),
    ) -> None:
        """Fold a LoRA adapter into its 16-bit base: a standalone model for from_pretrained, TGI or vLLM."""
        from tunebench.evaluate.merge import merge_adapter

        if (run is None) == (adapter is None):
            raise UserError("give either --run DIR or --adapter DIR (exactly one)",
                            "tunebench merge --run runs/<study>/<cell> --out merged/")
        base = None
        if run is not None:
            adapter, base = run_adapter(run)
        record = merge_adapter(adapter, out, base=base, dtype=dtype)
        terminal.console().print(f"merged {record['adapter']} into {record['base']} ({dtype}) in "
                                 f"{record['seconds']:.1f} s: {out}", highlight=False, soft_wrap=True)


def run_adapter(run: Path) -> tuple[Path, Any]:
    """A run's adapter and base model section, or a user error saying why it has none to merge."""
    from tunebench.rundir import RunDir

    run_dir = RunDir(run)
    cfg = run_dir.read_config()
    if cfg.method not in ADAPTER_METHODS:
        what = "a fully fine-tuned model is already standalone" if cfg.method == "full" else "it trained nothing"
        raise UserError(f"{run} is a '{cfg.method}' run with no adapter to merge ({what})",
                        f"merge a lora or qlora run; a full run's model is in {run_dir.train / 'model'}")
    if not run_dir.adapter.is_dir():
        raise UserError(f"{run} has no trained adapter ({run_dir.adapter} is missing)", "train the cell first")
    return run_dir.adapter, cfg.model
