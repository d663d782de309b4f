"""Splits that cannot leak.

- Copies shared by splits the source provides are resolved by `data.on_leak`: `drop` removes the
  training-side copy (and validation's copy of a test image), so evaluation splits stay exactly
  as given; `error` stops; `keep` trains on them.
- Validation and test splits carved out of train keep every duplicate group (exact and near
  copies joined into connected components) on one side, stratified by class and seeded.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Set, Tuple

import numpy as np

from facemask.config.schema import ConfigError


def carve(labels: Sequence[int], groups: Sequence[int], fraction: float, seed: int) -> np.ndarray:
    """Positions (sorted) of a holdout of `fraction` of the items, stratified by class, that no
    duplicate group straddles.

    Each group counts for its majority class; per class, the groups are shuffled with the seed
    and taken while taking one brings the class's holdout closer to its share. With single images
    (most groups) the fractions come out exact. scikit-learn's StratifiedGroupKFold does the same
    job but loops over every group and fold in Python (10 s for 8,000 images here, hours at
    ImageNet size), so this runs in numpy, linear in the number of images.
    """
    labels, groups = np.asarray(labels, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    if not len(labels):
        return np.empty(0, dtype=np.int64)
    _, group = np.unique(groups, return_inverse=True)
    n_groups = int(group.max()) + 1
    if n_groups < 2:
        raise ConfigError("cannot carve a held-out split: every image is a copy of every other")
    n_classes = int(labels.max()) + 1
    votes = np.zeros((n_groups, n_classes), dtype=np.int64)
    np.add.at(votes, (group, labels), 1)
    sizes, majority = votes.sum(axis=1), votes.argmax(axis=1)
    rng = np.random.default_rng(seed)
    chosen = np.zeros(n_groups, dtype=bool)
    for c in range(n_classes):
        own = np.flatnonzero(majority == c)
        target = fraction * sizes[own].sum()
        taken = 0
        for g in rng.permutation(own):
            if abs(taken + sizes[g] - target) < abs(taken - target):
                chosen[g] = True
                taken += sizes[g]
            if taken >= target:
                break
    held = np.flatnonzero(chosen[group])
    if len(held) == 0 or len(held) == len(labels):
        raise ConfigError(f"cannot carve a held-out split of {fraction:.2%} from {len(labels)} images in "
                          f"{n_groups} duplicate groups: lower or raise the fraction, or add images")
    return held


def folds(labels: Sequence[int], groups: Sequence[int], k: int, seed: int) -> np.ndarray:
    """Each item's fold (0..k-1) for k-fold cross-validation: a duplicate group never straddles two
    folds, and each class is spread evenly (each group, counted for its majority class, goes to the
    fold holding the fewest images of that class so far; groups shuffled with the seed, largest first)."""
    labels, groups = np.asarray(labels, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    _, group = np.unique(groups, return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0
    if n_groups < k:
        raise ConfigError(f"cannot make {k} folds of {n_groups} duplicate groups: lower --folds or add images")
    votes = np.zeros((n_groups, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(votes, (group, labels), 1)
    sizes, majority = votes.sum(axis=1), votes.argmax(axis=1)
    rng = np.random.default_rng(seed)
    fold_of_group = np.zeros(n_groups, dtype=np.int64)
    filled = np.zeros((votes.shape[1], k), dtype=np.int64)
    order = rng.permutation(n_groups)
    for g in order[np.argsort(-sizes[order], kind="stable")]:
        c = majority[g]
        fold_of_group[g] = int(np.argmin(filled[c]))
        filled[c, fold_of_group[g]] += sizes[g]
    return fold_of_group[group]


def leaked_copies(pairs: Sequence[Tuple[int, int]], split_of: Sequence[str], on_leak: str) -> Dict[str, Dict[int, int]]:
    """For on_leak=drop: which item to remove for each pair across given splits, keyed by its split,
    mapped to the item it copies. Train loses its copies of validation/test images; validation its
    copies of test images; the test split and the extra test sets (any other split name) always
    stay whole, so a copy shared by two of them stays in both (the audit still reports it)."""
    if on_leak != "drop":
        return {}
    rank = {"train": 0, "validation": 1}
    removed: Dict[str, Dict[int, int]] = {}
    for a, b in pairs:
        sa, sb = split_of[a], split_of[b]
        if sa == sb or min(rank.get(sa, 2), rank.get(sb, 2)) == 2:
            continue
        loser, other = (a, b) if rank.get(sa, 2) < rank.get(sb, 2) else (b, a)
        removed.setdefault(split_of[loser], {}).setdefault(loser, other)
    return removed


def within(pairs: Sequence[Tuple[int, int]], members: Set[int]) -> List[Tuple[int, int]]:
    return [(a, b) for a, b in pairs if a in members and b in members]


def achieved(sizes: Dict[str, int]) -> Dict[str, Dict[str, float]]:
    total = sum(sizes.values()) or 1
    return {name: {"images": n, "fraction": round(n / total, 4)} for name, n in sizes.items()}
