"""Token lengths: counting them in batches and summarising them (data show, the token-length profile)."""

from __future__ import annotations

import math
from typing import Any

TOKENIZE_BATCH = 512


def token_lengths(tokenizer: Any, texts: list[str], *, special_tokens: bool = False) -> list[int]:
    lengths: list[int] = []
    for start in range(0, len(texts), TOKENIZE_BATCH):
        encoded = tokenizer(texts[start:start + TOKENIZE_BATCH], add_special_tokens=special_tokens)
        lengths.extend(len(ids) for ids in encoded["input_ids"])
    return lengths


def percentile(sorted_values: list[int], q: float) -> int:
    """The nearest-rank percentile (a value that occurs), so p50/p90 are real lengths."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_stats(lengths: list[int]) -> dict[str, float | int]:
    if not lengths:
        return {"count": 0, "mean": 0.0, "p50": 0, "p90": 0, "max": 0}
    ordered = sorted(lengths)
    return {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 1), "p50": percentile(ordered, 50),
            "p90": percentile(ordered, 90), "max": ordered[-1]}


def histogram(lengths: list[int], edges: list[int]) -> list[int]:
    """Counts per bin [edges[i], edges[i+1]); the last edge must exceed the longest length."""
    import bisect

    counts = [0] * (len(edges) - 1)
    for n in lengths:
        counts[bisect.bisect_right(edges, n) - 1] += 1
    return counts
