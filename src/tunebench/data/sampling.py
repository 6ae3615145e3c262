"""Nested, stratified, seeded sampling of the training split, and carving a validation split from it.

Each stratum (a label; summarization has one) gets its own seeded permutation. Validation is carved from
the front of every permutation; the training sample is a prefix of what remains. The permutations depend
only on the seed and the stratum, so with the same seed a smaller fraction or count always selects a subset
of a larger one, and the carved validation split never overlaps any training sample.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tunebench.data.records import Example
from tunebench.errors import UserError

Strata = dict[str, list[Example]]


def permuted_strata(examples: list[Example], key: Callable[[Example], str], seed: int) -> Strata:
    strata: Strata = {}
    for ex in examples:
        strata.setdefault(key(ex), []).append(ex)
    for name, members in strata.items():
        # A string seed is hashed with SHA-512 by `random`, so the order is the same on every machine and run.
        random.Random(f"tunebench:{seed}:{name}").shuffle(members)
    return dict(sorted(strata.items()))


def validation_share(size: float, n: int) -> int:
    """Rows of one stratum that go to validation: its share, at least one, but never the whole stratum."""
    return 0 if n < 2 else min(n - 1, max(1, round(size * n)))


def carve_validation(strata: Strata, size: float) -> tuple[list[Example], Strata]:
    validation: list[Example] = []
    remaining: Strata = {}
    for name, members in strata.items():
        k = validation_share(size, len(members))
        validation.extend(members[:k])
        remaining[name] = members[k:]
    return validation, remaining


def carve_eval(examples: list[Example], key: Callable[[Example], str], seed: int, size: float,
               source: str) -> tuple[list[Example], list[Example]]:
    """(eval, rest): `size` of every stratum (at least one row; one always stays to train on), from a seeded
    permutation of its own, so the same source and seed always carve the same evaluation rows."""
    strata: Strata = {}
    for ex in examples:
        strata.setdefault(key(ex), []).append(ex)
    small = {name: len(members) for name, members in strata.items() if len(members) < 2}
    if small:
        which = ", ".join(f"'{name}' ({n} row)" for name, n in sorted(small.items()))
        raise UserError(f"{source}: too few rows to carve an evaluation split from: class {which}; each class "
                        "needs at least 2 (one to evaluate on, one to train on)",
                        "add rows of that class or drop them, or give the evaluation rows yourself: a 'split' "
                        "column (train/test) or data.eval_split: <file of test rows>")
    carved: list[Example] = []
    for name, members in sorted(strata.items()):
        order = list(members)
        random.Random(f"tunebench:eval:{seed}:{name}").shuffle(order)
        carved.extend(order[:min(len(order) - 1, max(1, round(size * len(order))))])
    chosen = {id(ex) for ex in carved}
    return in_source_order(carved, examples), [ex for ex in examples if id(ex) not in chosen]


def sample_fraction(strata: Strata, fraction: float) -> list[Example]:
    """`fraction` of every stratum (rounded, at least one), so every label stays represented."""
    if not 0 < fraction <= 1:
        raise UserError(f"data.train_fraction = {fraction} is outside (0, 1]", "give a fraction such as 0.25")
    chosen: list[Example] = []
    for members in strata.values():
        if members:
            chosen.extend(members[:max(1, round(fraction * len(members)))])
    return chosen


def sample_count(strata: Strata, count: int, available_note: str = "") -> list[Example]:
    """`count` examples spread over strata in proportion to their sizes.

    The r-th member of a stratum of n is ranked at (r + 0.5) / n (the Sainte-Laguë divisor method): taking
    a prefix of that ranking is proportional, and a larger count only ever adds examples.
    """
    available = sum(len(m) for m in strata.values())
    if count < 1:
        raise UserError(f"data.train_count = {count} must be at least 1", "give a positive number of examples")
    if count > available:
        raise UserError(f"data.train_count = {count} is larger than the training split ({available} rows"
                        f"{available_note})", f"give at most {available}, or use data.train_fraction")
    ranking = sorted(((r + 0.5) / len(m), name, r) for name, m in strata.items() for r in range(len(m)))
    return [strata[name][r] for _, name, r in ranking[:count]]


def in_source_order(chosen: list[Example], source: list[Example]) -> list[Example]:
    """The chosen examples in the order the source lists them (the trainer shuffles on its own seed)."""
    ids = {id(ex) for ex in chosen}
    return [ex for ex in source if id(ex) in ids]
