"""The stage functions the runner calls, and what their files mean for the results store.

`StageFunctions` is the runner's seam: by default the real `train_cell`, `evaluate_cell` and
`run_serve_loadtest`; a test can hand in others (one that raises out-of-memory, say) to check how the
runner copes. The runner records a finished stage from the files the stage wrote (the run directory is the
source of truth, the store an index of it), so a store moved aside can be rebuilt from the same files.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunebench.config.schema import ADAPTER_METHODS, PROMPT_METHODS, CellConfig
from tunebench.rundir import RunDir, read_json, write_json
from tunebench.study.store import Cost, Metric

StageFn = Callable[..., dict[str, Any]]
TRAIN_SECONDS = ("wall_time_s", "train_time_s")


@dataclass(frozen=True)
class StageFunctions:
    train: StageFn
    evaluate: StageFn
    loadtest: StageFn | None = None
    # training on N > 1 GPUs of one node (torchrun); None: `train` itself, in this process, with every GPU
    train_distributed: StageFn | None = None


def real_stages() -> StageFunctions:
    """The real stages, imported only when a study actually runs (they pull in torch)."""
    from tunebench.evaluate import evaluate_cell
    from tunebench.study.task import train_on_gpus
    from tunebench.train import train_cell

    return StageFunctions(train=train_cell, evaluate=evaluate_cell, loadtest=loadtest_stage(),
                          train_distributed=train_on_gpus)


def loadtest_stage() -> StageFn | None:
    try:
        from tunebench.loadtest.stage import run_serve_loadtest
    except ImportError:  # an installation without the serving extras
        return None
    return run_serve_loadtest


# ---------------------------------------------------------------- where each stage leaves its results


def eval_split(cfg: CellConfig) -> str:
    return cfg.eval.split or cfg.data.eval_split


def eval_dir(cfg: CellConfig, run: RunDir) -> Path:
    return run.eval_dir(eval_split(cfg), cfg.method)


def eval_marker(cfg: CellConfig, run: RunDir) -> Path:
    return eval_dir(cfg, run) / "metrics.json"


def train_marker(run: RunDir) -> Path:
    return run.train / "summary.json"


def loadtest_marker(run: RunDir) -> Path:
    return run.serve / "comparison.json"


# ---------------------------------------------------------------- reading metrics


def eval_metrics(values: dict[str, Any], n: int | None) -> list[Metric]:
    """metrics.json's `metrics`: {name: {"value": v, "ci95": [low, high]}} (or a plain number)."""
    out = []
    for name, entry in values.items():
        if isinstance(entry, dict) and isinstance(entry.get("value"), int | float):
            low, high = entry.get("ci95") or (None, None)
            out.append(Metric(name, float(entry["value"]), low, high, n))
        elif isinstance(entry, int | float) and not isinstance(entry, bool):
            out.append(Metric(name, float(entry), n=n))
    return out


def mean_ci(name: str, values: list[float]) -> Metric:
    """Mean with a normal-approximation 95% interval (token counts: many examples, light tails)."""
    mean = statistics.fmean(values)
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return Metric(name, mean, mean - half, mean + half, len(values))


def token_metrics(predictions: Path, generated_total: float | None, n: int | None) -> list[Metric]:
    """Mean prompt and output tokens per request, measured on the evaluated prompts."""
    prompt, output = [], []
    for line in predictions.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if row.get("skipped"):
            continue
        if isinstance(row.get("prompt_tokens"), int | float):
            prompt.append(float(row["prompt_tokens"]))
        if isinstance(row.get("generated_tokens"), int | float):
            output.append(float(row["generated_tokens"]))
    out = [mean_ci(name, values) for name, values in (("prompt_tokens_mean", prompt), ("output_tokens_mean", output))
           if values]
    if not output and generated_total is not None and n:
        # constrained classification scores the label tokens without generating text: no per-example count
        out.append(Metric("output_tokens_mean", generated_total / n, None, None, n))
    return out


# ---------------------------------------------------------------- turning files into store rows


@dataclass
class Record:
    metrics: list[Metric]
    cost: Cost | None
    artifacts: dict[str, Path]
    seconds: float | None
    detail: str | None = None
    inference: list[dict[str, Any]] | None = None


def price_for(cfg: CellConfig, device: str | None) -> tuple[str, float]:
    from tunebench.cost import resolve_price

    price = resolve_price(cfg.cost.instance, cfg.cost.price_per_hour, device)
    return price.name, price.price_per_hour


def stage_cost(cfg: CellConfig, seconds: float, device: str | None, tokens: float | None,
               note: str | None = None) -> Cost:
    instance, per_hour = price_for(cfg, device)
    return Cost(wall_seconds=seconds, device=device, instance=instance, price_per_hour=per_hour,
                usd=seconds / 3600.0 * per_hour, tokens=int(tokens) if tokens else None,
                tokens_per_second=tokens / seconds if tokens and seconds > 0 else None, note=note)


def first_number(data: dict[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


TRAIN_METRICS = ("train_loss", "train_loss_mean", "eval_loss", "eval_accuracy", "train_examples",
                 "validation_examples", "truncated_examples", "tokens_seen", "steps", "epochs_done", "mfu",
                 "peak_memory_gib", "trainable_parameters", "base_parameters")


def train_record(cfg: CellConfig, run: RunDir, measured: float | None) -> Record:
    summary = read_json(train_marker(run))
    seconds = first_number(summary, *TRAIN_SECONDS) or measured or 0.0
    device = summary.get("device") or device_of(run)
    cost = stage_cost(cfg, seconds, device, first_number(summary, "tokens_seen"))
    if first_number(summary, "cost_usd") is not None:  # the trainer charges every GPU of a multi-GPU run
        cost = replace(cost, usd=summary["cost_usd"], price_per_hour=summary.get("price_per_hour"),
                       instance=summary.get("price_source") or cost.instance)
    if first_number(summary, "tokens_per_s"):  # over the training loop itself, without loading
        cost = replace(cost, tokens_per_second=summary["tokens_per_s"])
    metrics = [Metric(key, float(summary[key])) for key in TRAIN_METRICS
               if isinstance(summary.get(key), int | float) and not isinstance(summary.get(key), bool)]
    weights = Path(summary["weights"]) if summary.get("weights") else run.adapter
    return Record(metrics=metrics, cost=cost, seconds=seconds, detail="; ".join(summary.get("notes") or []) or None,
                  artifacts={"summary": train_marker(run), "weights": weights, "train": run.train})


def eval_record(cfg: CellConfig, run: RunDir, measured: float | None) -> Record:
    folder = eval_dir(cfg, run)
    doc = read_json(folder / "metrics.json")
    n = doc.get("n_evaluated")
    speed = doc.get("speed") or {}
    metrics = eval_metrics(doc.get("metrics") or {}, n)
    metrics += token_metrics(folder / "predictions.jsonl", speed.get("generated_tokens"), n)
    tokens = sum((m.value or 0) * (m.n or 0) for m in metrics if m.name in ("prompt_tokens_mean",
                                                                          "output_tokens_mean"))
    processing = speed.get("wall_s")
    seconds = measured or ((processing or 0) + (speed.get("load_s") or 0)) or None
    cost = None
    if seconds:
        cost = stage_cost(cfg, seconds, device_of(run), tokens or None,
                          note="tokens/s over the scoring loop, model loading excluded")
        if processing and tokens:
            cost = replace(cost, tokens_per_second=tokens / processing)
    hosted = doc.get("endpoint")
    if hosted and seconds:  # a hosted model bills tokens: its usage × its per-token prices, not hours
        billed = (hosted.get("input_tokens") or 0) + (hosted.get("output_tokens") or 0)
        cost = Cost(wall_seconds=seconds, device="hosted", instance=f"{hosted['model']} at {hosted['url']}",
                    usd=hosted.get("usd"), tokens=billed or None,
                    tokens_per_second=billed / processing if billed and processing else None,
                    note=f"per-token prices: ${hosted['input_usd_per_1m']:g} per 1M input, "
                         f"${hosted['output_usd_per_1m']:g} per 1M output tokens")
    return Record(metrics=metrics, cost=cost, seconds=seconds, detail=doc.get("model_note"),
                  artifacts={"metrics": folder / "metrics.json", "predictions": folder / "predictions.jsonl"})


def device_of(run: RunDir) -> str:
    """The device a cell ran on: its provenance says, else this process's device (the one running it)."""
    if run.provenance_file.exists():
        recorded = read_json(run.provenance_file).get("device")
        if recorded:
            return recorded
    from tunebench.rundir import device_name

    return device_name()


def data_hash(cfg: CellConfig, run: RunDir) -> str | None:
    marker = eval_marker(cfg, run)
    return read_json(marker).get("data_hash") if marker.exists() else None


def headline(record: Record) -> str:
    """One line for the console after a stage: its main metrics."""
    shown = [m for m in record.metrics if m.name in ("accuracy", "rouge1", "rouge2", "exact_match",
                                                     "json_field_accuracy", "train_loss", "eval_loss")]
    parts = []
    for m in shown:
        ci = f" [{m.ci_low:.3g}, {m.ci_high:.3g}]" if m.ci_low is not None and m.ci_high is not None else ""
        parts.append(f"{m.name} {m.value:.3g}{ci}" + (f" n={m.n}" if m.n else ""))
    return ", ".join(parts)


# ---------------------------------------------------------------- a training run shared by an epochs group


def _link(target: Path, source: Path) -> None:
    """Point `target` at `source` with a relative symlink, replacing what was there atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.link")
    partial.unlink(missing_ok=True)
    partial.symlink_to(os.path.relpath(source, target.parent), target_is_directory=source.is_dir())
    os.replace(partial, target)


LABEL_FILES = ("labels.json", "adapter/labels.json", "model/labels.json")
PRORATED = ("wall_time_s", "train_time_s", "tokens_seen", "examples_seen", "cost_usd")


def link_checkpoint(run: RunDir, source: RunDir, epoch: int, source_cfg: CellConfig) -> None:
    """Make `run` a trained run whose weights are the epoch-N checkpoint of `source`'s training run.

    Its summary.json is the source's with the time, tokens and cost prorated to N of the epochs trained, and
    the metrics the trainer recorded at the end of epoch N (checkpoints/epoch-N/epoch.json).
    """
    checkpoint = source.checkpoints / f"epoch-{epoch}"
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"the training run {source.path} has no checkpoint for epoch {epoch} "
                                f"({checkpoint} is missing)")
    weights = run.adapter if source_cfg.method in ADAPTER_METHODS else run.train / "model"
    _link(weights, checkpoint)
    labels = next((source.train / name for name in LABEL_FILES if (source.train / name).exists()), None)
    if labels is not None:  # the label set the run was trained with, where evaluation looks for it
        _link(run.train / "labels.json", labels)
    summary = read_json(train_marker(source))
    trained = summary.get("epochs") or source_cfg.training.epochs or epoch
    share = epoch / trained
    at_epoch = read_json(checkpoint / "epoch.json") if (checkpoint / "epoch.json").exists() else {}
    prorated = {k: summary[k] * share for k in PRORATED if isinstance(summary.get(k), int | float)}
    note = (f"epoch-{epoch} checkpoint of the {trained}-epoch training run of {source.path.name}: its time, "
            f"tokens and cost × {epoch}/{trained}")
    write_json(train_marker(run), {
        **summary, **prorated, "cell_id": run.path.name, "epochs_done": epoch, "steps": at_epoch.get("step"),
        "train_loss": None, "eval_loss": at_epoch.get("eval_loss"), "eval_accuracy": at_epoch.get("eval_accuracy"),
        "weights": str(weights), "shared_training_run": source.path.name, "epoch": epoch, "epochs_trained": trained,
        "notes": [*summary.get("notes", []), note],
    })


def shared_train_record(cfg: CellConfig, run: RunDir, source_id: str) -> Record:
    record = train_record(cfg, run, None)
    if record.cost is not None:
        record.cost = replace(record.cost, note=f"share of the training run of {source_id}")
    return record


# ---------------------------------------------------------------- serve + load test


def model_ref(cfg: CellConfig, run: RunDir) -> str:
    """What the load test serves: the trained run itself, or the base model for a prompting cell."""
    return cfg.model.name if cfg.method in PROMPT_METHODS else str(run.path)


# comparison.json's engine fields stored as they are (inference table, schema 2)
ENGINE_FIELDS = ("engine_version", "engine_command", "served", "adapters", "output_tokens_per_s", "ttft_p90_s",
                 "pricing")


def loadtest_record(cfg: CellConfig, run: RunDir, measured: float | None, study_dir: Path) -> Record:
    comparison = read_json(loadtest_marker(run))
    rows, metrics = [], []
    for row in comparison.get("engines", []):
        engine = row["engine"]
        result = run.serve / row["loadtest"] if row.get("loadtest") else None
        rows.append({"engine": engine, "max_rps": row.get("max_sustainable_rps"),
                     "throughput_rps": row.get("throughput_rps"), "p90_s": row.get("latency_p90_s"),
                     "tokens_per_request": row.get("tokens_per_request"), "price_per_hour": row.get("price_per_hour"),
                     "instance": row.get("instance"), "usd_per_1k_tokens": row.get("cost_per_1k_tokens"),
                     "usd_per_1k_requests": row.get("cost_per_1k_requests"),
                     "result": os.path.relpath(result, study_dir) if result else None,
                     **{key: row.get(key) for key in ENGINE_FIELDS}})
        for key in ("max_sustainable_rps", "throughput_rps", "latency_p90_s", "cost_per_1k_tokens"):
            if isinstance(row.get(key), int | float):
                metrics.append(Metric(f"{engine}.{key}", float(row[key])))
    seconds = measured
    cost = stage_cost(cfg, seconds, device_of(run), None, note="serving and load-testing") if seconds else None
    return Record(metrics=metrics, cost=cost, seconds=seconds, inference=rows,
                  artifacts={"comparison": loadtest_marker(run)})
