"""The generation task's metrics: generated text against a reference, each with a 95% interval.

    exact_match   normalized prediction == normalized reference (eval.normalize: case, whitespace,
                  punctuation); Wilson interval
    token_f1      SQuAD's token-level F1 (lower case, punctuation and articles removed); bootstrap
    rouge         ROUGE-1/2/L/Lsum F-measure ×100 (evaluate.metrics, as summarization); bootstrap
    bleu, chrf    sacrebleu's corpus BLEU and chrF (0-100): per-example statistics resampled and the corpus
                  score recomputed for each of the bootstrap resamples
    json          json_valid (the answer parses as JSON), json_exact (parsed equal to the target) and
                  json_field_accuracy (per example the share of the target's leaf fields, at dotted paths, that
                  the answer has with an equal value, strings compared under eval.normalize; an invalid answer
                  scores 0), with json_schema_valid against eval.json_schema when set
    module:fn     a user metric: fn(prediction, reference) -> number, called once per example (with
                  `inputs=`, the example's input fields, when it takes that argument); bootstrap, or Wilson
                  when every value is 0 or 1

An answer wrapped in a Markdown code fence (```json ... ```) is read without the fence. A user metric that
cannot be imported, raises, or returns something other than a finite number is a UserError naming the
metric and the example.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import re
import string
import sys
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunebench.config.tasks import SCHEMA_OUTPUT, generation_metrics, is_user_metric, user_metric_name
from tunebench.errors import UserError
from tunebench.evaluate import metrics as m

if TYPE_CHECKING:
    from tunebench.config.schema import EvalConfig

FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.DOTALL)
ARTICLES = re.compile(r"\b(a|an|the)\b")


# ---------------------------------------------------------------- normalization, exact match, token F1


def normalized(text: str, options: Sequence[str]) -> str:
    """`text` with what `options` says to ignore removed: case, whitespace (runs collapsed), punctuation."""
    if "case" in options:
        text = text.casefold()
    if "punctuation" in options:
        text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    if "whitespace" in options:
        text = " ".join(text.split())
    return text.strip()


def exact_match(pred: str, ref: str, options: Sequence[str]) -> float:
    return float(normalized(pred, options) == normalized(ref, options))


def squad_tokens(text: str) -> list[str]:
    """SQuAD v1.1's normalize_answer, split: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return ARTICLES.sub(" ", text).split()


def token_f1(pred: str, ref: str) -> float:
    """SQuAD's token-level F1 between one prediction and one reference (in [0, 1])."""
    pred_tokens, ref_tokens = squad_tokens(pred), squad_tokens(ref)
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------- BLEU and chrF (sacrebleu)


def sacrebleu_metric(name: str) -> Any:
    from sacrebleu.metrics import BLEU, CHRF

    # effective_order: a short answer without 4-gram matches does not zero its sentence BLEU
    return BLEU(effective_order=True) if name == "bleu" else CHRF()


def corpus_with_ci(name: str, preds: Sequence[str], refs: Sequence[str], boot: dict[str, int]) -> tuple[
        float, list[float] | None, list[float]]:
    """(corpus score, its bootstrap interval, each example's sentence score) for bleu or chrf.

    The interval resamples examples and recomputes the corpus score from the summed per-example statistics
    (the way sacrebleu's own paired bootstrap does), seeded like every other interval here.
    """
    import numpy as np

    metric = sacrebleu_metric(name)
    stats = metric._extract_corpus_statistics(list(preds), [list(refs)])
    value = float(metric._aggregate_and_compute(stats).score)
    sentence = [float(metric.sentence_score(p, [r]).score) for p, r in zip(preds, refs, strict=True)]
    resamples = boot["resamples"]
    if resamples <= 0 or not stats:
        return value, None, sentence
    sums = np.asarray(stats, dtype=float)[m.resample_indices(len(stats), resamples, boot["seed"])].sum(axis=1)
    scores = [float(metric._compute_score_from_stats(list(row)).score) for row in sums]
    return value, m.percentiles(scores, 0.95), sentence


# ---------------------------------------------------------------- JSON


def parse_json(text: str) -> tuple[bool, Any]:
    """(parsed, value) for an answer: the text itself, or the inside of a Markdown code fence."""
    text = text.strip()
    fenced = FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """The leaf values of a JSON value by dotted path (lists are compared whole, as one leaf)."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(leaves(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def same_value(pred: Any, ref: Any, options: Sequence[str]) -> bool:
    if isinstance(ref, str) and isinstance(pred, str):
        return normalized(pred, options) == normalized(ref, options)
    if isinstance(ref, bool) or isinstance(pred, bool):  # True == 1 in Python, not in JSON
        return type(pred) is type(ref) and pred == ref
    return pred == ref


def field_matches(pred: Any, ref: Any, options: Sequence[str]) -> dict[str, bool]:
    """For each leaf path of the reference: whether the prediction has an equal value there."""
    missing = object()
    predicted = leaves(pred)
    return {path: (value := predicted.get(path, missing)) is not missing and same_value(value, expected, options)
            for path, expected in leaves(ref).items()}


def load_schema(spec: str | dict[str, Any]) -> dict[str, Any]:
    """eval.json_schema as a checked JSON schema: an inline mapping, or a JSON file's path."""
    from jsonschema import SchemaError
    from jsonschema.validators import validator_for

    if isinstance(spec, str):
        path = Path(spec).expanduser()
        try:
            schema = json.loads(path.read_text())
        except OSError as err:
            raise UserError(f"eval.json_schema: cannot read {path}: {err.strerror or err}",
                            "give the path of a JSON schema file, or the schema inline") from None
        except ValueError as err:
            raise UserError(f"eval.json_schema: {path} is not JSON ({err})", "fix the schema file") from None
    else:
        schema = spec
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as err:
        raise UserError(f"eval.json_schema: not a valid JSON schema: {err.message}",
                        "fix the schema (https://json-schema.org)") from None
    return schema


# ---------------------------------------------------------------- user metrics


@dataclass
class UserMetric:
    spec: str  # module:function as the study wrote it
    function: Callable[..., Any]
    takes_inputs: bool
    calls: int = field(default=0)

    @property
    def name(self) -> str:
        return user_metric_name(self.spec)

    def __call__(self, example_id: str, pred: str, ref: str, inputs: dict[str, str]) -> float:
        self.calls += 1
        try:
            value = (self.function(pred, ref, inputs=inputs) if self.takes_inputs else self.function(pred, ref))
        except Exception as err:  # the user's code: any failure is reported with the example it failed on
            raise UserError(f"user metric '{self.spec}' raised {type(err).__name__}: {err} on example "
                            f"'{example_id}'", "fix the metric function (it gets the prediction and the "
                            "reference text and returns a number)") from None
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise UserError(f"user metric '{self.spec}' returned {value!r} on example '{example_id}', not a finite "
                            "number", "return an int or float (e.g. 1.0 for a hit, 0.0 for a miss)")
        return float(value)


def load_user_metric(spec: str) -> UserMetric:
    """Import `module:function` (from the working directory too) or `path/to/file.py:function`."""
    module_name, _, attr = spec.rpartition(":")
    module_name, attr = module_name.strip(), attr.strip()
    fix = ("make the module importable from the working directory (or on PYTHONPATH), or give "
           "'path/to/file.py:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise UserError(f"user metric '{spec}': no file {path}", fix)
            loader_spec = importlib.util.spec_from_file_location(f"tunebench_user_metric_{path.stem}", path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except UserError:
        raise
    except Exception as err:  # an import runs the user's module: report whatever stopped it
        raise UserError(f"user metric '{spec}' cannot be imported: {type(err).__name__}: {err}", fix) from None
    function = getattr(module, attr, None)
    if not callable(function):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserError(f"user metric '{spec}': {module_name} has no function '{attr}'",
                        f"name one of its functions: {', '.join(names) or 'none'}")
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_inputs = "inputs" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    return UserMetric(spec, function, takes_inputs)


# ---------------------------------------------------------------- scoring an evaluation


@dataclass
class TextScores:
    """Metrics with intervals, each example's scores, and what metrics.json carries besides."""

    metrics: dict[str, dict[str, Any]]
    per_example: list[dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)


class TextScorer:
    """The metrics a study chose, resolved up front (user metrics imported, the schema read) so a bad choice
    fails before any model is loaded."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self.names = generation_metrics(cfg)
        self.user = {spec: load_user_metric(spec) for spec in self.names if is_user_metric(spec)}
        self.schema = load_schema(cfg.json_schema) if cfg.json_schema is not None and "json" in self.names else None

    def score(self, ids: Sequence[str], preds: Sequence[str], refs: Sequence[str],
              inputs: Sequence[dict[str, str]], boot: dict[str, int]) -> TextScores:
        out = TextScores({}, [{} for _ in preds])
        for name in self.names:
            if name in self.user:
                metric = self.user[name]
                values = [metric(i, p, r, x) for i, p, r, x in zip(ids, preds, refs, inputs, strict=True)]
                self._add(out, metric.name, values, boot, proportion=set(values) <= {0.0, 1.0})
                out.extra.setdefault("user_metrics", {})[metric.name] = {"entry_point": name, "calls": metric.calls}
            elif name == "exact_match":
                values = [exact_match(p, r, self.cfg.normalize) for p, r in zip(preds, refs, strict=True)]
                self._add(out, "exact_match", values, boot, proportion=True)
                out.extra["normalize"] = list(self.cfg.normalize)
            elif name == "token_f1":
                self._add(out, "token_f1", [token_f1(p, r) for p, r in zip(preds, refs, strict=True)], boot)
            elif name == "rouge":
                per_example = m.rouge_per_example(preds, refs)
                for rouge_name in m.ROUGE_TYPES:
                    self._add(out, rouge_name, [s[rouge_name] for s in per_example], boot)
            elif name in ("bleu", "chrf"):
                value, ci, sentence = corpus_with_ci(name, preds, refs, boot)
                out.metrics[name] = {"value": value, "ci95": ci}
                for record, v in zip(out.per_example, sentence, strict=True):
                    record[name] = round(v, 4)
            elif name == "json":
                self._json(out, ids, preds, refs, boot)
        return out

    def _add(self, out: TextScores, name: str, values: list[float], boot: dict[str, int], *,
             proportion: bool = False) -> None:
        ci = m.proportion_ci(values, **boot) if proportion else m.mean_ci(values, **boot)
        out.metrics[name] = {"value": sum(values) / max(1, len(values)), "ci95": ci}
        for record, value in zip(out.per_example, values, strict=True):
            record[name] = round(value, 4)

    def _json(self, out: TextScores, ids: Sequence[str], preds: Sequence[str], refs: Sequence[str],
              boot: dict[str, int]) -> None:
        valid, exact, fields, schema_ok = [], [], [], []
        per_field: dict[str, list[float]] = {}
        validator = None
        if self.schema is not None:
            from jsonschema.validators import validator_for

            validator = validator_for(self.schema)(self.schema)
        for example_id, pred, ref in zip(ids, preds, refs, strict=True):
            ok_ref, expected = parse_json(ref)
            if not ok_ref:
                raise UserError(f"the json metric needs JSON targets, and example '{example_id}' has "
                                f"{ref[:80]!r}", "fix that example's target, or leave json out of eval.metrics")
            ok, value = parse_json(pred)
            matches = field_matches(value, expected, self.cfg.normalize) if ok else dict.fromkeys(leaves(expected),
                                                                                                  False)
            valid.append(float(ok))
            exact.append(float(ok and not (set(leaves(value)) ^ set(matches)) and all(matches.values())))
            fields.append(sum(matches.values()) / len(matches))
            for path, hit in matches.items():
                per_field.setdefault(path, []).append(float(hit))
            if validator is not None:
                schema_ok.append(float(ok and validator.is_valid(value)))
        self._add(out, "json_field_accuracy", fields, boot)
        self._add(out, "json_valid", valid, boot, proportion=True)
        self._add(out, "json_exact", exact, boot, proportion=True)
        if validator is not None:
            self._add(out, SCHEMA_OUTPUT, schema_ok, boot, proportion=True)
        # Each field's accuracy over the examples whose target has it (the extraction task's weak spots).
        out.extra["json_fields"] = {path: {"accuracy": round(sum(h) / len(h), 4), "n": len(h)}
                                    for path, h in sorted(per_field.items())}
