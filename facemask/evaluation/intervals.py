"""95% intervals on a split's headline metrics: how far the figures can be trusted.

Proportions of images (accuracy; for two classes, precision and recall of the positive class)
get Wilson score intervals, scipy's `binomtest(...).proportion_ci(method="wilson")`. The others
(balanced accuracy, F1, ROC-AUC, calibration error; precision and recall averaged over more than
two classes) get a seeded percentile bootstrap, stratified by true class so every resample keeps
the split's class counts. scipy's `bootstrap` cannot stratify, so the resampling is here: each
resample is a row of per-image counts, and every metric is a matrix product over those rows
(vectorised, in chunks of resamples; no Python loop per resample).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from facemask.evaluation.analysis import CALIBRATION_BINS, calibration
from facemask.evaluation.metrics import classification_scores

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
# Resamples x images per chunk: 160 MB of float64 counts, about 0.5 GB at the peak with the
# ROC-AUC's reordered copies (measured for 200 x 100,000).
CHUNK_VALUES = 20_000_000


def wilson(successes: int, trials: int, confidence: float = CONFIDENCE) -> Optional[Tuple[float, float]]:
    """The Wilson score interval of successes / trials (None without trials)."""
    from scipy.stats import binomtest

    if trials == 0:
        return None
    ci = binomtest(int(successes), int(trials)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def resample_counts(label_ids: np.ndarray, resamples: int, seed: int = SEED) -> Iterator[np.ndarray]:
    """Stratified bootstrap resamples as count matrices (chunk x images): row r says how often
    each image is drawn in resample r; each class is drawn with replacement from itself."""
    rng = np.random.default_rng(seed)
    n = len(label_ids)
    chunk = max(1, min(resamples, CHUNK_VALUES // max(n, 1)))
    classes = [np.flatnonzero(label_ids == c) for c in np.unique(label_ids)]
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        counts = np.zeros((rows, n))
        offsets = (np.arange(rows) * n)[:, None]
        for members in classes:
            drawn = members[rng.integers(0, len(members), size=(rows, len(members)))]
            counts += np.bincount((drawn + offsets).ravel(), minlength=rows * n).reshape(rows, n)
        yield counts


def _safe_divide(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.divide(top, bottom, out=np.zeros_like(top, dtype=np.float64), where=bottom > 0)


def _auc(counts: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC-AUC of each resample: the weighted Mann-Whitney statistic, ties counted half."""
    order = np.argsort(scores, kind="stable")
    sorted_scores, positive = scores[order], positive[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    weights = counts[:, order]
    pos = np.add.reduceat(weights * positive, starts, axis=1)
    neg = np.add.reduceat(weights * ~positive, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    return _safe_divide((pos * (below + 0.5 * neg)).sum(axis=1), pos.sum(axis=1) * neg.sum(axis=1))


def resampled_scores(counts: np.ndarray, probs: np.ndarray, label_ids: np.ndarray, pos_label: int,
                     bins: int = CALIBRATION_BINS) -> Dict[str, np.ndarray]:
    """The metrics of every resample in `counts`, defined as metrics.classification_scores and
    analysis.calibration define them on the whole split."""
    num_labels = probs.shape[1]
    preds = probs.argmax(axis=1)
    correct = preds == label_ids
    present = np.unique(label_ids)
    hits = np.stack([(label_ids == c) & correct for c in present], axis=1)
    class_sizes = np.stack([counts @ (label_ids == c) for c in present], axis=1)
    out = {"balanced_accuracy": _safe_divide(counts @ hits, class_sizes).mean(axis=1)}
    per_class = []
    for c in (range(num_labels) if num_labels > 2 else [pos_label]):
        tp = counts @ ((preds == c) & (label_ids == c))
        fp = counts @ ((preds == c) & (label_ids != c))
        fn = counts @ ((preds != c) & (label_ids == c))
        per_class.append((_safe_divide(tp, tp + fp), _safe_divide(tp, tp + fn), _safe_divide(2 * tp, 2 * tp + fp + fn)))
    precision, recall, f1 = (np.mean([p[k] for p in per_class], axis=0) for k in range(3))
    out.update(f1=f1, precision=precision, recall=recall)
    if len(present) == num_labels:
        if num_labels == 2:
            out["roc_auc"] = _auc(counts, probs[:, pos_label], label_ids == pos_label)
        else:
            out["roc_auc"] = np.mean([_auc(counts, probs[:, c], label_ids == c) for c in range(num_labels)], axis=0)
    confidence = probs.max(axis=1)
    which = np.clip(np.digitize(confidence, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True), 0, bins - 1)
    in_bin = which[:, None] == np.arange(bins)[None, :]
    gap = np.abs(counts @ (in_bin * correct[:, None]) - counts @ (in_bin * confidence[:, None]))
    out["ece"] = gap.sum(axis=1) / counts.sum(axis=1)
    return out


def split_intervals(probs: np.ndarray, label_ids: np.ndarray, pos_label: int, resamples: int = RESAMPLES,
                    seed: int = SEED, confidence: float = CONFIDENCE) -> Dict[str, Any]:
    """Every headline metric of one evaluated split with its interval (`<prefix>_intervals.json`)."""
    probs, label_ids = np.asarray(probs, dtype=np.float64), np.asarray(label_ids, dtype=np.int64)
    values = classification_scores(probs, label_ids, pos_label)
    values["ece"] = calibration(probs, label_ids)["ece"]
    preds = probs.argmax(axis=1)
    binary = probs.shape[1] == 2
    proportions = {"accuracy": (int((preds == label_ids).sum()), len(label_ids))}
    if binary:
        tp = int(((preds == pos_label) & (label_ids == pos_label)).sum())
        proportions["precision"] = (tp, int((preds == pos_label).sum()))
        proportions["recall"] = (tp, int((label_ids == pos_label).sum()))
    chunks = [resampled_scores(c, probs, label_ids, pos_label) for c in resample_counts(label_ids, resamples, seed)]
    tail = 100 * (1 - confidence) / 2
    metrics: Dict[str, Any] = {}
    for name, value in values.items():
        if name in proportions:
            bounds, method = wilson(*proportions[name], confidence=confidence), "wilson"
        else:
            draws = np.concatenate([c[name] for c in chunks])
            bounds, method = tuple(float(v) for v in np.percentile(draws, [tail, 100 - tail])), "bootstrap"
        metrics[name] = {"value": round(float(value), 6), "low": None if bounds is None else round(bounds[0], 6),
                         "high": None if bounds is None else round(bounds[1], 6), "method": method}
    return {"confidence": confidence, "images": int(len(label_ids)),
            "bootstrap": {"resamples": resamples, "seed": seed, "stratified_by": "true class",
                          "interval": "percentile"},
            "metrics": metrics}
