"""Which metrics fit which task, and the names a study's metric choice reports under.

Classification reports accuracy and macro-F1, summarization ROUGE; the generation task (any input fields →
a target field) reports what `eval.metrics` chooses. A metric that does not fit the task (accuracy on free
text, eval.metrics on a classification study) is refused when the study is read, before any model loads.
This module is pure: the report reads the headline names from it without importing the metric code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunebench.errors import UserError, did_you_mean

if TYPE_CHECKING:
    from tunebench.config.schema import CellConfig, EvalConfig

# A chosen metric -> the names it reports under (the first is the one a headline shows).
GENERATION_OUTPUTS = {
    "exact_match": ("exact_match",),
    "token_f1": ("token_f1",),
    "rouge": ("rouge1", "rouge2", "rougeL", "rougeLsum"),
    "bleu": ("bleu",),
    "chrf": ("chrf",),
    "json": ("json_field_accuracy", "json_valid", "json_exact"),
}
GENERATION_METRICS = tuple(GENERATION_OUTPUTS)
DEFAULT_GENERATION_METRICS = ("exact_match", "token_f1")
SCHEMA_OUTPUT = "json_schema_valid"  # reported by `json` when eval.json_schema is set
# Metrics of the fixed tasks, named so that asking for one on free text gets a pointed answer.
LABEL_METRICS = ("accuracy", "macro_f1")


def is_user_metric(name: str) -> bool:
    """A user metric is a Python entry point, `module:function` or `path/to/file.py:function`."""
    return ":" in name


def user_metric_name(spec: str) -> str:
    return spec.rsplit(":", 1)[1].strip()


def generation_metrics(cfg: EvalConfig) -> list[str]:
    return list(cfg.metrics or DEFAULT_GENERATION_METRICS)


def metric_outputs(cfg: EvalConfig) -> list[str]:
    """Every metric name a generation evaluation reports, in the study's order."""
    names: list[str] = []
    for metric in generation_metrics(cfg):
        if is_user_metric(metric):
            names.append(user_metric_name(metric))
        else:
            names += GENERATION_OUTPUTS[metric]
            if metric == "json" and cfg.json_schema is not None:
                names.append(SCHEMA_OUTPUT)
    return names


def check_cell(cfg: CellConfig, where: str) -> None:
    """Refuse metric and field settings that do not fit the cell's task (a UserError naming the fix)."""
    task = cfg.data.task
    if task != "generation":
        if cfg.eval.metrics is not None:
            fixed = "accuracy and macro-F1" if task == "classification" else "ROUGE-1/2/L/Lsum"
            raise UserError(f"{where}: eval.metrics is set, but the {task} task always reports {fixed}",
                            "remove eval.metrics, or use data.task: generation for free-text metrics")
        for key in ("inputs", "target"):
            if getattr(cfg.data, key) is not None:
                raise UserError(f"{where}: data.{key} names the generation task's fields, and data.task is {task}",
                                f"remove data.{key} (map {task} fields with data.columns), or set "
                                "data.task: generation")
        return
    allowed = ", ".join(GENERATION_METRICS)
    seen: dict[str, str] = {}
    for metric in generation_metrics(cfg.eval):
        if is_user_metric(metric):
            module, _, function = metric.rpartition(":")
            if not module.strip() or not function.strip().isidentifier():
                raise UserError(f"{where}: eval.metrics: '{metric}' is not a Python entry point",
                                "give a user metric as 'module:function' or 'path/to/file.py:function'")
            outputs: tuple[str, ...] = (user_metric_name(metric),)
        elif metric in LABEL_METRICS:
            raise UserError(f"{where}: eval.metrics: '{metric}' is a classification metric and does not fit the "
                            "generation task's free text",
                            f"use exact_match (with eval.normalize: [case, whitespace, punctuation]) or token_f1; "
                            f"allowed: {allowed}, or a user metric 'module:function'")
        elif metric not in GENERATION_OUTPUTS:
            raise UserError(f"{where}: eval.metrics: unknown metric '{metric}'",
                            f"{did_you_mean(metric, list(GENERATION_METRICS))}; or a user metric "
                            "'module:function'")
        else:
            outputs = GENERATION_OUTPUTS[metric]
        for name in outputs:
            if name in seen:
                raise UserError(f"{where}: eval.metrics: '{metric}' reports '{name}', which '{seen[name]}' "
                                "already reports", "list each metric once, and give a user metric a function "
                                "name of its own")
            seen[name] = metric
    if cfg.eval.json_schema is not None and "json" not in generation_metrics(cfg.eval):
        raise UserError(f"{where}: eval.json_schema is set, but eval.metrics has no 'json'",
                        "add json to eval.metrics, or remove eval.json_schema")
