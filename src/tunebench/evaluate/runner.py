"""One evaluation: a cell's eval split through its prompt format, scored, written as predictions + metrics.

    evaluate_cell(cell, run)            the studies runner: writes run.eval_dir(split, method)/
    evaluate(cell, loaded, out_dir)     the same on an already loaded model, into any directory

Outputs: `predictions.jsonl` (one line per example, skipped ones included and marked), `metrics.json`
(metrics with 95% intervals, Wilson for proportions and bootstrap otherwise, counts of skipped and truncated
prompts and why, speed, model note) and, for classification, `confusion.png`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunebench.config.schema import PROMPT_METHODS, CellConfig
from tunebench.errors import UserError
from tunebench.evaluate import metrics as m
from tunebench.evaluate.generation import Generation
from tunebench.evaluate.loading import (
    Loaded,
    check_same_labels,
    load_for_eval,
    recorded_labels,
    run_label_places,
)
from tunebench.rundir import RunDir, write_atomic, write_json

DEFAULT_MAX_NEW_TOKENS = {"classification": 8, "summarization": 96, "generation": 64}


@dataclass
class Scored:
    """What scoring produced: one record per evaluated example, the metrics, and generation counts."""

    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    generated_tokens: int = 0


def eval_split(cell: CellConfig) -> str:
    return cell.eval.split or cell.data.eval_split


def split_name(split: str) -> str:
    """A split as a directory name: a split given as a file path (data/test.jsonl) is named by its stem."""
    return Path(split).stem if "/" in split or "\\" in split or Path(split).suffix else split


def evaluate_cell(cell: CellConfig, run: RunDir, *, limit: int | None = None, progress: bool = True) -> dict:
    """Evaluate a cell with its run's model/adapter; writes run.eval_dir(split, method) and returns metrics.json."""
    if cell.model.endpoint:  # a hosted model: no weights to load
        from tunebench.evaluate.endpoint import evaluate_endpoint

        return evaluate_endpoint(cell, run, limit=limit, progress=progress)
    start = time.perf_counter()
    scorer = text_scorer(cell)  # a metric that cannot work fails before the model loads
    loaded = load_for_eval(cell, run)
    trained = recorded_labels(*run_label_places(run, None))
    return evaluate(cell, loaded, run.eval_dir(split_name(eval_split(cell)), cell.method), limit=limit,
                    progress=progress, trained_labels=trained, load_seconds=time.perf_counter() - start,
                    scorer=scorer)


def text_scorer(cell: CellConfig) -> Any:
    """The generation task's metrics, checked and resolved (user metrics imported); None for other tasks."""
    from tunebench.config.tasks import check_cell

    check_cell(cell, "eval")
    if cell.data.task != "generation":
        return None
    from tunebench.evaluate.textmetrics import TextScorer

    return TextScorer(cell.eval)


def evaluate(cell: CellConfig, loaded: Loaded, out_dir: Path, *, limit: int | None = None, progress: bool = True,
             trained_labels: list[str] | None = None, load_seconds: float = 0.0, predictor: Callable | None = None,
             extra: dict[str, Callable[[], Any]] | None = None, scorer: Any = None) -> dict:
    """Evaluate on the cell's eval split and write predictions.jsonl + metrics.json (+ confusion.png) to out_dir.

    `trained_labels` is the label set the model was fine-tuned on (train/labels.json); the data's labels must
    match it. `predictor` replaces `predict` (a hosted model: evaluate/endpoint.py); `extra` adds fields to
    metrics.json, each computed once prediction is done.
    """
    if cell.model.endpoint and predictor is None:
        raise UserError(f"model.endpoint {cell.model.endpoint} is a hosted model, evaluated through its API",
                        "evaluate it in a study: tunebench run STUDY.yaml")
    from tunebench.data import load_task_data
    from tunebench.prompts import PromptBuilder

    scorer = scorer or text_scorer(cell)
    data = load_task_data(cell.data, loaded.tokenizer, eval_split=eval_split(cell))
    labels = task_labels(cell, data, trained_labels)
    examples = limited(data.test, cell.eval.limit if limit is None else limit, cell.data.seed, cell.data.task,
                       eval_split(cell))
    builder = PromptBuilder.for_cell(cell, loaded.tokenizer, data, loaded.source)
    prompts = [builder.for_method(cell.method, ex) for ex in examples]
    kept = [(ex, p) for ex, p in zip(examples, prompts, strict=True) if not p.skipped]
    if not kept:
        raise UserError(f"all {len(prompts)} prompts were too long for the model's context and were skipped "
                        "(prompt.context_policy=skip)", "use --set prompt.context_policy=truncate, fewer few-shot "
                        "examples (prompt.few_shot_examples), or a model with a longer context")
    content_free = content_free_prompts(cell, loaded, builder, labels)
    with progress_bar(len(kept), f"eval {cell.method} on {eval_split(cell)}", progress) as advance:
        start = time.perf_counter()
        stops = [*builder.stops_for(cell.method), *cell.eval.stop]
        outputs, prior = (predictor or predict)(cell, loaded, kept, labels, stops, advance, content_free)
        wall = time.perf_counter() - start
    if scorer is not None:
        scored = score_texts(cell, outputs, [ex for ex, _ in kept], builder.templates.input_fields, scorer)
    else:
        scored = score(cell, outputs, [ex.target for ex, _ in kept], labels)
    if cell.data.task == "classification":
        scored.extra["calibration"] = calibration_record(cell, loaded, prior)
    result = metrics_document(cell, loaded, data, prompts, builder, scored, wall, load_seconds)
    result |= {name: make() for name, make in (extra or {}).items()}
    write_outputs(out_dir, examples, prompts, scored, result)
    if progress:
        print_summary(result)
    return result


def task_labels(cell: CellConfig, data: Any, trained: list[str] | None) -> list[str] | None:
    if cell.data.task != "classification":
        return None
    if trained is not None:
        check_same_labels(data.labels, trained)
        return trained
    return data.labels


def limited(examples: list[Any], limit: int | None, seed: int, task: str, split: str) -> list[Any]:
    """The first `limit` examples of a seeded, stratified ranking (a source sorted by label stays balanced)."""
    from tunebench.data.sampling import in_source_order, permuted_strata, sample_count

    if not examples:
        raise UserError(f"the eval split '{split}' has no examples", "choose another split with --split "
                        "(or eval.split / data.eval_split)")
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit}: the limit must be at least 1", "give a positive number of examples, "
                        "or leave --limit out to evaluate the whole split")
    if limit is None or limit >= len(examples):
        return examples
    key = (lambda ex: ex.target) if task == "classification" else (lambda ex: "")
    return in_source_order(sample_count(permuted_strata(examples, key, seed), limit), examples)


# ---------------------------------------------------------------- scoring


def calibration(cell: CellConfig, loaded: Loaded) -> str:
    """The calibration a cell's label scoring uses: none for free generation and classifier heads; `auto` is
    content_free for prompted methods (it lifts SmolLM2-135M's zero-shot accuracy on the built-in set and on
    20 Newsgroups; numbers in the README) and none for fine-tuned ones, which learned the labels' prior."""
    if cell.data.task != "classification" or cell.eval.scoring == "generate" or loaded.source.kind == "encoder":
        return "none"
    if cell.eval.calibrate == "auto":
        return "content_free" if cell.method in PROMPT_METHODS else "none"
    return cell.eval.calibrate


def content_free_prompts(cell: CellConfig, loaded: Loaded, builder: Any, labels: list[str] | None) -> list[str]:
    """The cell's prompt with each content-free input in place of the text (few-shot examples kept)."""
    from tunebench.data.records import Example
    from tunebench.evaluate.classify import CONTENT_FREE_INPUTS

    if calibration(cell, loaded) != "content_free" or not labels:
        return []
    prompts = [builder.for_method(cell.method, Example(f"content-free-{i}", text, labels[0]))
               for i, text in enumerate(CONTENT_FREE_INPUTS)]
    return [p.text for p in prompts if not p.skipped]


def calibration_record(cell: CellConfig, loaded: Loaded, prior: Any) -> dict[str, Any]:
    """What metrics.json says about calibration: the method, and the content-free label prior it removed."""
    from tunebench.evaluate.classify import CONTENT_FREE_INPUTS

    record: dict[str, Any] = {"method": calibration(cell, loaded), "setting": cell.eval.calibrate}
    if prior is not None:
        record["content_free_inputs"] = list(CONTENT_FREE_INPUTS)
        record["label_prior"] = {label: round(p, 4) for label, p in prior.label_probabilities().items()}
    return record


def max_new_tokens(cell: CellConfig) -> int:
    return cell.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[cell.data.task]


def predict(cell: CellConfig, loaded: Loaded, kept: list[tuple[Any, Any]], labels: list[str] | None,
            stop: list[str], advance: Callable[[int], None], content_free: list[str]) -> tuple[list[Any], Any]:
    """The model's work, and all of what examples/s measures: Generations or ClassResults, in order, and the
    content-free label prior when calibrating (its few forward passes are part of the measured time)."""
    from tunebench.evaluate import classify
    from tunebench.evaluate.generation import generate

    model, tok, prompts = loaded.model, loaded.tokenizer, [p.text for _, p in kept]
    batch = cell.eval.batch_size
    if loaded.source.kind == "encoder":
        if cell.data.task != "classification":
            raise UserError(f"{cell.model.name} is an encoder classifier; it cannot do {cell.data.task}",
                            f"evaluate {cell.data.task} with a causal or seq2seq model")
        return classify.head_classify(model, tok, [ex.input for ex, _ in kept], labels, batch_size=batch,
                                      on_progress=advance), None
    if cell.data.task != "classification" or cell.eval.scoring == "generate":
        return generate(model, tok, prompts, max_new_tokens=max_new_tokens(cell), stop=stop, batch_size=batch,
                        engine=cell.eval.engine, on_progress=advance), None
    prior = classify.content_free_prior(model, tok, content_free, prompts, labels) if content_free else None
    if cell.eval.scoring == "loglik":
        results = classify.loglik_classify(model, tok, prompts, labels, on_progress=advance)
        return (classify.calibrated(results, prior) if prior else results), prior
    return classify.constrained_classify(model, tok, prompts, labels, batch_size=batch, prior=prior,
                                         on_progress=advance), prior


def score(cell: CellConfig, outputs: list[Any], refs: list[str], labels: list[str] | None) -> Scored:
    boot = {"resamples": cell.eval.bootstrap, "seed": cell.data.seed}
    if cell.data.task == "summarization":
        return score_summaries(outputs, refs, boot)
    if outputs and isinstance(outputs[0], Generation):
        return score_generated(outputs, refs, labels, boot)
    scored = scored_labels([r.label for r in outputs], refs, labels, boot)
    for record, result in zip(scored.records, outputs, strict=True):
        record["label_scores"] = {label: round(v, 4) for label, v in result.scores.items()}
    scored.generated_tokens = sum(r.n_tokens for r in outputs)
    if outputs and outputs[0].mean_scores is not None:  # loglik: the length-normalised ranking too
        add_ranking(scored, [r.label_by_mean for r in outputs], refs, boot, "length_normalised")
    if outputs and outputs[0].raw is not None:  # loglik calibrated: the uncalibrated rankings too
        raw = [r.raw for r in outputs]
        add_ranking(scored, [r.label for r in raw], refs, boot, "uncalibrated")
        add_ranking(scored, [r.label_by_mean for r in raw], refs, boot, "length_normalised_uncalibrated")
    return scored


def score_texts(cell: CellConfig, outputs: list[Any], examples: list[Any], input_fields: tuple[str, ...],
                scorer: Any) -> Scored:
    """The generation task: the chosen metrics on the stripped generated text, each example's scores."""
    boot = {"resamples": cell.eval.bootstrap, "seed": cell.data.seed}
    preds = [g.text.strip() for g in outputs]
    inputs = [{input_fields[0]: ex.input, **dict(ex.extra)} for ex in examples]
    result = scorer.score([ex.id for ex in examples], preds, [ex.target for ex in examples], inputs, boot)
    records = [{"raw_output": g.text, "prediction": pred, "score": s, "generated_tokens": g.n_tokens,
                "finish_reason": g.finish_reason}
               for g, pred, s in zip(outputs, preds, result.per_example, strict=True)]
    lengths = [g.n_tokens for g in outputs]
    extra = {**result.extra, "mean_generated_tokens": sum(lengths) / max(1, len(lengths)),
             "stopped_by_length": sum(g.finish_reason == "length" for g in outputs)}
    return Scored(records, result.metrics, extra, sum(lengths))


def add_ranking(scored: Scored, preds: list[str | None], refs: list[str], boot: dict[str, int], name: str) -> None:
    """Another ranking of the same scores: accuracy_<name> in the metrics, prediction_<name> per record."""
    scored.metrics[f"accuracy_{name}"] = accuracy_with_ci(preds, refs, boot)
    for record, label in zip(scored.records, preds, strict=True):
        record[f"prediction_{name}"] = label


def score_summaries(outputs: list[Any], refs: list[str], boot: dict[str, int]) -> Scored:
    preds = [g.text.strip() for g in outputs]
    per_example = m.rouge_per_example(preds, refs)
    metric_values = {name: with_ci(sum(s[name] for s in per_example) / max(1, len(per_example)),
                                   m.mean_ci([s[name] for s in per_example], **boot)) for name in m.ROUGE_TYPES}
    records = [{"raw_output": g.text, "prediction": pred, "score": {k: round(v, 4) for k, v in s.items()},
                "generated_tokens": g.n_tokens, "finish_reason": g.finish_reason}
               for g, pred, s in zip(outputs, preds, per_example, strict=True)]
    lengths = [g.n_tokens for g in outputs]
    extra = {"mean_generated_tokens": sum(lengths) / max(1, len(lengths)),
             "stopped_by_length": sum(g.finish_reason == "length" for g in outputs)}
    return Scored(records, metric_values, extra, sum(lengths))


def score_generated(outputs: list[Any], refs: list[str], labels: list[str], boot: dict[str, int]) -> Scored:
    """Free text parsed into labels; the raw exact match (stripped text == label) is the original study's metric."""
    from tunebench.evaluate.classify import parse_label

    parsed = [parse_label(g.text, labels) for g in outputs]
    scored = scored_labels(parsed, refs, labels, boot)
    exact = [float(g.text.strip() == ref) for g, ref in zip(outputs, refs, strict=True)]
    invalid = [float(p is None) for p in parsed]
    scored.metrics["raw_exact_match"] = with_ci(sum(exact) / max(1, len(exact)), m.proportion_ci(exact, **boot))
    scored.metrics["invalid_rate"] = with_ci(sum(invalid) / max(1, len(invalid)), m.proportion_ci(invalid, **boot))
    for record, g, hit in zip(scored.records, outputs, exact, strict=True):
        record.update(raw_output=g.text, exact_match=bool(hit), generated_tokens=g.n_tokens)
    scored.generated_tokens = sum(g.n_tokens for g in outputs)
    return scored


def scored_labels(preds: list[str | None], refs: list[str], labels: list[str], boot: dict[str, int]) -> Scored:
    summary = m.classification_metrics(preds, refs, labels)
    predicted = [m.INVALID if p is None else p for p in preds]
    metric_values = {"accuracy": accuracy_with_ci(preds, refs, boot),
                     "macro_f1": with_ci(summary["macro_f1"], m.macro_f1_ci(predicted, refs, **boot))}
    records = [{"raw_output": pred, "prediction": pred, "score": float(pred == ref)}
               for pred, ref in zip(preds, refs, strict=True)]
    extra = {"labels": list(labels), "per_class": summary["per_class"], "confusion": summary["confusion"]}
    return Scored(records, metric_values, extra)


def accuracy_with_ci(preds: list[str | None], refs: list[str], boot: dict[str, int]) -> dict[str, Any]:
    hits = [float(p == r) for p, r in zip(preds, refs, strict=True)]
    return with_ci(sum(hits) / max(1, len(hits)), m.proportion_ci(hits, **boot))


def with_ci(value: float, ci: list[float] | None) -> dict[str, Any]:
    return {"value": value, "ci95": ci}


# ---------------------------------------------------------------- outputs


def metrics_document(cell: CellConfig, loaded: Loaded, data: Any, prompts: list[Any], builder: Any, scored: Scored,
                     wall: float, load_seconds: float) -> dict[str, Any]:
    n_evaluated = len(scored.records)
    skipped = sum(p.skipped for p in prompts)
    truncated = sum(p.truncated and not p.skipped for p in prompts)
    context = getattr(builder, "context_length", None)
    room = f"{context} tokens" if context else "the model's context"
    doc: dict[str, Any] = {
        "task": cell.data.task, "method": cell.method, "split": eval_split(cell),
        "scoring": scoring_name(cell, loaded),
        "model": cell.model.name, "adapter": str(loaded.adapter) if loaded.adapter else None,
        "model_note": loaded.model_note, "data_source": cell.data.source, "data_hash": data.data_hash,
        "n_examples": len(prompts), "n_evaluated": n_evaluated, "n_skipped": skipped, "n_truncated": truncated,
        "skipped_why": (f"prompt did not fit {room} with {cell.prompt.answer_tokens} tokens left for the answer "
                        "(prompt.context_policy=skip)") if skipped else None,
        "truncated_why": (f"input cut so the prompt fits {room} with {cell.prompt.answer_tokens} tokens left for "
                          "the answer (prompt.context_policy=truncate)") if truncated else None,
        "inputs_truncated_by_cleaning": data.report.truncated_inputs,
        # a single-file source: which rows were carved to evaluate on, so the split can be checked and rebuilt
        "eval_carved": ({"from": data.report.eval_from, "ids": data.report.eval_ids}
                        if data.report.eval_from else None),
        "metrics": scored.metrics, **scored.extra,
        "speed": speed(n_evaluated, scored.generated_tokens, wall, load_seconds),
        "bootstrap": {"resamples": cell.eval.bootstrap, "seed": cell.data.seed, "level": 0.95},
        "settings": {"dtype": str(getattr(loaded.model, "dtype", "hosted")).removeprefix("torch."),
                     "engine": cell.eval.engine,
                     "calibrate": calibration(cell, loaded),
                     "batch_size": cell.eval.batch_size,
                     "max_new_tokens": max_new_tokens(cell),
                     "few_shot_examples": cell.prompt.few_shot_examples if cell.method == "few_shot" else None,
                     "context_policy": cell.prompt.context_policy},
    }
    return doc


def scoring_name(cell: CellConfig, loaded: Loaded) -> str:
    if cell.data.task != "classification":
        return "generate"
    return "classifier head" if loaded.source.kind == "encoder" else cell.eval.scoring


def speed(n: int, generated_tokens: int, wall: float, load_seconds: float) -> dict[str, Any]:
    return {"wall_s": round(wall, 3), "load_s": round(load_seconds, 3),
            "examples_per_s": round(n / wall, 3) if wall > 0 else None, "generated_tokens": generated_tokens,
            "generated_tokens_per_s": round(generated_tokens / wall, 2) if wall > 0 and generated_tokens else None}


def write_outputs(out_dir: Path, examples: list[Any], prompts: list[Any], scored: Scored, doc: dict[str, Any]) -> None:
    records = iter(scored.records)
    lines = []
    for ex, prompt in zip(examples, prompts, strict=True):
        base = {"id": ex.id, "prompt_tokens": prompt.n_tokens, "truncated": prompt.truncated,
                "skipped": prompt.skipped, "reference": ex.target}
        detail = {"raw_output": None, "prediction": None, "score": None} if prompt.skipped else next(records)
        lines.append(json.dumps({**base, **detail}, ensure_ascii=False))
    write_atomic(out_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    # The prompts as evaluated, one JSON object a line: the study's load test sends each cell these (a few-shot
    # prompt is several times longer than a fine-tuned model's, and its serving cost follows).
    evaluated = [json.dumps({"id": ex.id, "prompt": p.text}, ensure_ascii=False)
                 for ex, p in zip(examples, prompts, strict=True) if not p.skipped]
    if evaluated:
        write_atomic(out_dir / "prompts.jsonl", "\n".join(evaluated) + "\n")
    if "confusion" in doc:
        title = f"{doc['model']} {doc['method']} ({doc['scoring']}) on {doc['split']}"
        m.confusion_png(doc["confusion"], out_dir / "confusion.png", title)
        doc["confusion_png"] = "confusion.png"
    write_json(out_dir / "metrics.json", doc)


def headline(doc: dict[str, Any]) -> str:
    names = {"summarization": ["rouge1", "rouge2", "rougeL"], "classification": ["accuracy", "macro_f1"]}.get(
        doc["task"], list(doc["metrics"])[:4])
    parts = []
    for name in names:
        value, ci = doc["metrics"][name]["value"], doc["metrics"][name]["ci95"]
        parts.append(f"{name} {value:.3g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""))
    return ", ".join(parts)


def print_summary(doc: dict[str, Any]) -> None:
    from tunebench import terminal

    s = doc["speed"]
    terminal.console(stderr=True).print(
        f"evaluated {doc['n_evaluated']} of {doc['n_examples']} examples ({doc['n_skipped']} skipped, "
        f"{doc['n_truncated']} truncated) in {s['wall_s']:.1f} s ({s['examples_per_s'] or 0:.2f} ex/s): "
        f"{headline(doc)}", highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar with examples/s; yields the function that advances it."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tunebench import terminal

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    started = time.perf_counter()
    with Progress(*columns, console=terminal.console(stderr=True)) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            elapsed = time.perf_counter() - started
            bar.update(task, advance=n, rate=f"{done / elapsed:.2f} ex/s" if elapsed > 0 else "")

        yield advance
