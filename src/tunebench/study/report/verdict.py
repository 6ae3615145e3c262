"""Is the fine-tuned model better than prompting, at this n? A paired bootstrap of the per-example difference.

Both methods were scored on the same evaluation examples (same split, same data seed), so the question is
about the mean of d_i = score_fine-tuned(i) - score_prompting(i) over the examples both scored. Resampling
the examples (1,000 times, seed 0, the same resamples for every comparison) gives a 95% percentile interval
of that mean; the difference is significant only when the interval excludes 0. An unpaired comparison of the
two intervals would throw away that the examples are shared, and two overlapping 95% intervals do not mean
"no difference" either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunebench.study.results import Entry, StudyResults, primary_of, scale_of

RESAMPLES = 1000
SEED = 0


@dataclass(frozen=True)
class Comparison:
    method: str          # the fine-tuned method
    base: str            # the prompting method it is compared with
    difference: float    # mean per-example difference, in the metric's display units (points)
    low: float
    high: float
    n: int               # examples both methods scored

    @property
    def better(self) -> bool:
        return self.low > 0

    @property
    def worse(self) -> bool:
        return self.high < 0


def example_scores(path: Path, metric: str) -> dict[str, float]:
    """Per-example score of the headline metric from predictions.jsonl (skipped examples have none)."""
    scores: dict[str, float] = {}
    if not path.is_file():
        return scores
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        score = row.get("score")
        if isinstance(score, dict):
            score = score.get(metric)
        if isinstance(score, int | float):
            scores[str(row["id"])] = float(score)
    return scores


def entry_scores(results: StudyResults, entry: Entry, metric: str) -> dict[str, float]:
    """Per-example scores of an entry; with several seeds, each example's mean over the seeds that scored it."""
    per_cell = [example_scores(results.predictions[c.id], metric) for c in entry.cells if c.id in results.predictions]
    ids = set().union(*per_cell) if per_cell else set()
    return {i: sum(s[i] for s in per_cell if i in s) / sum(1 for s in per_cell if i in s) for i in ids}


def paired_bootstrap(diffs: list[float], resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    import numpy as np

    data = np.asarray(diffs, dtype=float)
    means = data[np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def compare(results: StudyResults, task: str, tuned: Entry, base: Entry) -> Comparison | None:
    """The paired comparison of two entries on the examples both scored; None without per-example scores."""
    metric = primary_of(task, tuned)
    # proportions are stored 0/1 and shown in points; ROUGE per example is already ×100
    scale = 1.0 if metric.startswith("rouge") else scale_of(metric)
    a, b = entry_scores(results, tuned, metric), entry_scores(results, base, metric)
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    diffs = [(a[i] - b[i]) * scale for i in shared]
    low, high = paired_bootstrap(diffs)
    return Comparison(tuned.first.method, base.first.method, sum(diffs) / len(diffs), low, high, len(shared))
