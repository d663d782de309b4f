"""What to label next, on arrays: each pool image's class probabilities (and, for the diverse
strategies, its embedding: the model's pooled feature before the classifier head) in, the picked
rows in rank order out, with the score each was picked by (higher: picked earlier).

- margin: Settles' margin sampling, 1 - (p1 - p2) (scikit-activeml's `uncertainty_scores` utility);
- entropy: the entropy of the probabilities;
- coreset: k-centre greedy (Sener and Savarese 2018) on the L2-normalised embeddings, started at the
  most uncertain image: each pick is the image farthest from every earlier one;
- clusters: uncertainty within clusters (Zhdanov 2019, "Diverse mini-batch active learning"): the
  PREFILTER x budget most uncertain images by margin, k-means into `budget` clusters on their
  embeddings, the most uncertain of each cluster;
- random: a seeded permutation, the baseline.

Written on numpy and scikit-learn rather than through scikit-activeml (docs/select.md says why: its
k_greedy_center holds a budget x pool float64 matrix, 1.6 GB for 2,000 of 100,000, and importing it
imports torch, which the ONNX backend does without); the tests hold these to scikit-activeml's
`uncertainty_scores` and `k_greedy_center` on the same arrays.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import numpy as np

PREFILTER = 10  # clusters: candidates per pick (Zhdanov's beta), the most uncertain ones
EMBEDDING_STRATEGIES = ("coreset", "clusters")


def margin_utility(probs: np.ndarray) -> np.ndarray:
    """1 - (top probability - second): 1 for a 50/50 image, 0 for a certain one."""
    if probs.shape[1] < 2:
        return np.zeros(len(probs))
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy_utility(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def _by_utility(utility: np.ndarray, budget: int) -> np.ndarray:
    # Stable on ties: equal scores keep the pool's (path) order.
    return np.argsort(-utility, kind="stable")[:budget]


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: distances then compare directions (ViT features' norms vary with
    contrast and size more than with what the image shows)."""
    x = np.asarray(embeddings, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def k_centre_greedy(embeddings: np.ndarray, budget: int, first: int) -> Tuple[np.ndarray, np.ndarray]:
    """Picks in order, each the row farthest (Euclidean) from all earlier picks, starting at `first`;
    with the distance each was picked at (NaN for the first: it had none to be far from). Memory: one distance per row."""
    x = np.asarray(embeddings, dtype=np.float32)
    budget = min(budget, len(x))
    picked = np.empty(budget, dtype=np.int64)
    at = np.empty(budget, dtype=np.float64)
    picked[0], at[0] = first, np.nan
    nearest = np.linalg.norm(x - x[first], axis=1)
    for k in range(1, budget):
        nxt = int(np.argmax(nearest))
        picked[k], at[k] = nxt, float(nearest[nxt])
        np.minimum(nearest, np.linalg.norm(x - x[nxt], axis=1), out=nearest)
    return picked, at


def uncertain_in_clusters(probs: np.ndarray, embeddings: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """The most uncertain image of each of `budget` k-means clusters of the most uncertain
    PREFILTER x budget images, ranked by uncertainty."""
    from sklearn.cluster import KMeans

    utility = margin_utility(probs)
    candidates = _by_utility(utility, PREFILTER * budget)
    if len(candidates) <= budget:
        return candidates
    clusters = KMeans(n_clusters=budget, n_init=1, random_state=seed).fit_predict(normalised(embeddings[candidates]))
    best: Dict[int, int] = {}
    for cluster, k in zip(clusters.tolist(), candidates.tolist()):  # most uncertain first: each cluster's first
        best.setdefault(cluster, k)
    picked = np.array(list(best.values()), dtype=np.int64)
    return picked[np.argsort(-utility[picked], kind="stable")]


def select(strategy: str, probs: np.ndarray, budget: int, embeddings: Optional[np.ndarray] = None,
           seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(picked rows in rank order, each one's score) of `budget` (or all, if fewer) rows."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if strategy in EMBEDDING_STRATEGIES and embeddings is None:
        raise ValueError(f"strategy {strategy!r} needs the images' embeddings")
    if budget <= 0 or not len(probs):
        return np.empty(0, dtype=np.int64), np.empty(0)
    return STRATEGIES[strategy](np.asarray(probs), embeddings, min(budget, len(probs)), seed)


def _margin(probs, embeddings, budget, seed):
    utility = margin_utility(probs)
    picked = _by_utility(utility, budget)
    return picked, utility[picked]


def _entropy(probs, embeddings, budget, seed):
    utility = entropy_utility(probs)
    picked = _by_utility(utility, budget)
    return picked, utility[picked]


def _coreset(probs, embeddings, budget, seed):
    first = int(_by_utility(margin_utility(probs), 1)[0])
    return k_centre_greedy(normalised(embeddings), budget, first)


def _clusters(probs, embeddings, budget, seed):
    picked = uncertain_in_clusters(probs, embeddings, budget, seed)
    return picked, margin_utility(probs)[picked]


def _random(probs, embeddings, budget, seed):
    picked = np.random.default_rng(seed).permutation(len(probs))[:budget]
    return picked, np.full(len(picked), np.nan)


STRATEGIES: Dict[str, Callable[..., Tuple[np.ndarray, np.ndarray]]] = {
    "clusters": _clusters, "margin": _margin, "entropy": _entropy, "coreset": _coreset, "random": _random}
DEFAULT_STRATEGY = "clusters"
