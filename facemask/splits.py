"""Splits that cannot leak.

- Copies shared by splits the source provides are resolved by `data.on_leak`: `drop` removes the
  training-side copy (and validation's copy of a test image), so evaluation splits stay exactly
  as given; `error` stops; `keep` trains on them.
- Validation and test splits carved out of train keep every duplicate group (exact and near
  copies joined into connected components) on one side: scikit-learn's `StratifiedGroupKFold`,
  stratified by class and seeded, with the fraction taken as a whole number of its folds.
"""

from __future__ import annotations

import warnings
from fractions import Fraction
from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from .config import ConfigError

MAX_FOLDS = 20  # fractions are met to the nearest 1/20 (or finer where 1/n fits exactly)


def carve(labels: Sequence[int], groups: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Positions (sorted) of a holdout of about `fraction` of the items, stratified by label, that
    no group straddles."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    from sklearn.model_selection import StratifiedGroupKFold

    share = Fraction(fraction).limit_denominator(MAX_FOLDS)
    folds, take = share.denominator, share.numerator
    distinct = len(np.unique(groups))
    if distinct < 2:
        raise ConfigError("cannot carve a held-out split: every image is a copy of every other")
    # scikit-learn needs no more folds than groups, nor than the largest class has members.
    limit = min(distinct, int(np.bincount(labels).max()))
    if folds > limit:
        folds = max(2, limit)
        take = min(folds - 1, max(1, round(fraction * folds)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Small classes get fewer members than folds; the split is still group-safe, just coarser.
        warnings.simplefilter("ignore", UserWarning)
        parts = [held for _, held in splitter.split(np.zeros(len(labels)), labels, groups)]
    return np.sort(np.concatenate(parts[:take]))


def leaked_copies(pairs: Sequence[Tuple[int, int]], split_of: Sequence[str], on_leak: str) -> Dict[str, Dict[int, int]]:
    """For on_leak=drop: which item to remove for each pair across given splits, keyed by its split,
    mapped to the item it copies. Train loses its copies of validation/test images; validation its
    copies of test images; the test split always stays whole."""
    if on_leak != "drop":
        return {}
    rank = {"train": 0, "validation": 1, "test": 2}
    removed: Dict[str, Dict[int, int]] = {}
    for a, b in pairs:
        sa, sb = split_of[a], split_of[b]
        if sa == sb:
            continue
        loser, other = (a, b) if rank[sa] < rank[sb] else (b, a)
        removed.setdefault(split_of[loser], {}).setdefault(loser, other)
    return removed


def within(pairs: Sequence[Tuple[int, int]], members: Set[int]) -> List[Tuple[int, int]]:
    return [(a, b) for a, b in pairs if a in members and b in members]


def achieved(sizes: Dict[str, int]) -> Dict[str, Dict[str, float]]:
    total = sum(sizes.values()) or 1
    return {name: {"images": n, "fraction": round(n / total, 4)} for name, n in sizes.items()}
