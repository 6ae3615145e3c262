"""Quality metrics: ROUGE, classification metrics, bootstrap confidence intervals, the confusion-matrix plot.

ROUGE is the `rouge-score` package with Porter stemming; scores are F-measures ×100, aggregated as the mean
of per-example F-measures (not the package's BootstrapAggregator, whose mid value is also a mean but whose
resampling we do ourselves, seeded). ROUGE-Lsum reads one sentence per line: `sentence_lines` puts every
sentence on its own line, splitting at existing line breaks and after '.', '!' or '?' followed by
whitespace (a simple splitter, no nltk model; abbreviations such as "Dr. Who" split too, in both the
prediction and the reference alike).

Confidence intervals are 95% percentile bootstraps over examples with a fixed seed, so a rerun reproduces
them exactly; proportions (accuracy, exact match) use the Wilson score interval instead, which stays honest at
0% and 100%, where every bootstrap resample is the same and the interval collapses to a point.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
INVALID = "(invalid)"  # the prediction of a free-text answer that names no label


# ---------------------------------------------------------------- ROUGE


def sentence_lines(text: str) -> str:
    """The text with one sentence per line (what ROUGE-Lsum expects)."""
    parts = re.split(r"(?<=[.!?])\s+|\s*\n\s*", text.strip())
    return "\n".join(p for p in parts if p)


def rouge_per_example(preds: Sequence[str], refs: Sequence[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L/Lsum F-measure ×100 for each (prediction, reference) pair."""
    from rouge_score import rouge_scorer

    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [{name: score.fmeasure * 100 for name, score in scorer.score(sentence_lines(ref), sentence_lines(pred))
             .items()} for pred, ref in zip(preds, refs, strict=True)]


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean per-example ROUGE F-measures ×100: {"rouge1": .., "rouge2": .., "rougeL": .., "rougeLsum": ..}."""
    per_example = rouge_per_example(preds, refs)
    if not per_example:
        return {name: float("nan") for name in ROUGE_TYPES}
    return {name: sum(s[name] for s in per_example) / len(per_example) for name in ROUGE_TYPES}


# ---------------------------------------------------------------- classification


def classification_metrics(preds: Sequence[str | None], refs: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1 (scikit-learn); None predictions are invalid.

    Macro-F1 averages over the classes present in the references, so a class the evaluation slice lacks
    does not count as a zero; an invalid answer is a miss for its true class.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    predicted = [INVALID if p is None else p for p in preds]
    present = sorted(set(refs))
    precision, recall, f1, support = precision_recall_fscore_support(
        refs, predicted, labels=list(labels), zero_division=0)
    columns = list(labels) + ([INVALID] if INVALID in predicted else [])
    return {
        "accuracy": float(accuracy_score(refs, predicted)),
        "macro_f1": float(f1_score(refs, predicted, labels=present, average="macro", zero_division=0)),
        "per_class": {label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)},
        "confusion": {"labels": columns,
                      "matrix": confusion_matrix(refs, predicted, labels=columns).tolist()},
    }


def macro_f1_resampled(preds: Sequence[str], refs: Sequence[str], indices: Any) -> Any:
    """Macro-F1 of every bootstrap resample at once (rows of `indices`), averaged over each resample's true
    classes exactly as `classification_metrics` does with scikit-learn (F1 = 2·TP / (predicted + true))."""
    import numpy as np

    codes = {name: k for k, name in enumerate(sorted({*preds, *refs}))}
    pred = np.array([codes[p] for p in preds])[indices]
    true = np.array([codes[r] for r in refs])[indices]
    rows, k = indices.shape[0], len(codes)
    offsets = np.arange(rows)[:, None] * k

    def counts(values: Any) -> Any:
        return np.bincount(values.ravel(), minlength=rows * k).reshape(rows, k)

    hits = np.bincount((offsets + true)[pred == true], minlength=rows * k).reshape(rows, k)
    predicted, actual = counts(offsets + pred), counts(offsets + true)
    f1 = np.divide(2 * hits, predicted + actual, out=np.zeros((rows, k)), where=(predicted + actual) > 0)
    present = actual > 0
    return (f1 * present).sum(axis=1) / present.sum(axis=1)


# ---------------------------------------------------------------- bootstrap


def resample_indices(n_items: int, resamples: int, seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed).integers(0, n_items, size=(resamples, n_items))


def mean_ci(values: Sequence[float], *, resamples: int = 1000, seed: int = 0,
            level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean; None when there is nothing to resample."""
    import numpy as np

    if resamples <= 0 or len(values) == 0:
        return None
    data = np.asarray(values, dtype=float)
    means = data[resample_indices(len(data), resamples, seed)].mean(axis=1)
    return percentiles(means, level)


def proportion_ci(hits: Sequence[float], *, resamples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> list[float] | None:
    """Wilson score interval of the share of 1s in `hits` (0/1 values); None where `mean_ci` gives None
    (no examples, or intervals switched off with resamples=0). `seed` is accepted for the same call shape."""
    import math
    from statistics import NormalDist

    if resamples <= 0 or len(hits) == 0:
        return None
    n, share = len(hits), sum(hits) / len(hits)
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    # at 0% or 100% the bound on that side is exactly the observed share (rounding would miss it)
    return [0.0 if share == 0 else centre - half, 1.0 if share == 1 else centre + half]


def macro_f1_ci(preds: Sequence[str], refs: Sequence[str], *, resamples: int = 1000, seed: int = 0,
                level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of macro-F1 (vectorized: a thousand resamples in milliseconds)."""
    if resamples <= 0 or len(refs) == 0:
        return None
    return percentiles(macro_f1_resampled(preds, refs, resample_indices(len(refs), resamples, seed)), level)


def percentiles(values: Any, level: float) -> list[float]:
    import numpy as np

    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


# ---------------------------------------------------------------- confusion matrix plot


def confusion_png(confusion: dict[str, Any], path: Path, title: str = "") -> Path:
    """Rows: true class; columns: predicted. Uses matplotlib's object API (no pyplot, no global backend)."""
    import numpy as np
    from matplotlib.figure import Figure

    columns = confusion["labels"]
    matrix = np.asarray(confusion["matrix"])
    rows = [label for label in columns if label != INVALID]
    matrix = matrix[:len(rows)]
    size = max(4.0, 0.45 * len(columns) + 2)
    fig = Figure(figsize=(size, size * len(rows) / len(columns) + 1))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=6,
                    color="white" if count > matrix.max() / 2 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.png")
    fig.savefig(partial, dpi=110)
    partial.replace(path)  # atomic, like every other result file
    return path
