"""The statistics of label-issues (training/label_issues.py trains the folds and writes the files):
out-of-fold probabilities assembled from the folds' validation predictions, confident learning
(cleanlab 2.x), the estimated noise per pair of classes, and the warnings that say when the flags
mean little. Arrays in, arrays out: no model, no file.

- `filter.find_label_issues` (prune_by_noise_rate) flags, `rank.get_label_quality_scores`
  (self_confidence) ranks, `count.estimate_joint` (the calibrated confident joint) estimates the
  noise per class pair; the suggested label is the out-of-fold arg-max.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from facemask.config.schema import ConfigError
from facemask.run_folder import LABEL_ISSUES_FIGURE


class OutOfFoldError(ConfigError):
    """The folds' predictions do not cover the training images once each. `fold` is the index of
    the fold at fault where one is, else None (the folds together miss or add images)."""

    def __init__(self, message: str, fold: Optional[int] = None) -> None:
        super().__init__(message)
        self.fold = fold


def assemble_out_of_fold(fold_rows: Sequence[Sequence[Mapping[str, str]]], names: Sequence[str],
                         digests: Sequence[str], given: Sequence[str],
                         labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Per training image (its content digest and given label, in `digests` order), its out-of-fold
    probabilities (columns in `labels` order, each row summing to 1) and the index of the fold they
    come from. `fold_rows[k]` are fold `names[k]`'s validation prediction rows (sha256, true_label,
    prob_LABEL). Rows are matched by digest: copies with equal digests are one duplicate group, so
    in one fold. A training image without exactly one fold, or a predicted image that is not a
    training image, is an OutOfFoldError: the folds were trained on other data."""
    columns = [f"prob_{label}" for label in labels]
    found: Dict[str, Tuple[int, np.ndarray]] = {}
    predicted: Counter = Counter()
    for k, rows in enumerate(fold_rows):
        header = set(rows[0]) if rows else set()
        if not {"sha256", *columns} <= header or any(not row["sha256"] for row in rows):
            raise OutOfFoldError(f"lacks the images' content digests or the classes {list(labels)} (a fold trained by "
                                 "an older version or with data.audit=false)", k)
        for row in rows:
            digest = row["sha256"]
            if digest in found and found[digest][0] != k:
                raise OutOfFoldError(f"image sha256:{digest} is in the validation folds of both "
                                     f"{names[found[digest][0]]} and {names[k]}: the folds were carved from other data", k)
            found[digest] = (k, np.array([float(row[c]) for c in columns]))
            predicted[(digest, row["true_label"])] += 1
    expected = Counter(zip(digests, given))
    if predicted != expected:
        lacking, extra = expected - predicted, predicted - expected
        raise OutOfFoldError(
            f"the folds' validation predictions are not this config's training images: {sum(lacking.values())} of "
            f"{len(digests)} training images have no out-of-fold probability and {sum(extra.values())} "
            f"predicted images are not training images (e.g. {next(iter(lacking or extra))[0][:12]}). The config or "
            "the data changed since the folds were trained")
    probs = np.stack([found[digest][1] for digest in digests])
    fold = np.array([found[digest][0] for digest in digests])
    return probs / probs.sum(axis=1, keepdims=True), fold  # the prediction files round to 6 places


@dataclass
class Issues:
    is_issue: np.ndarray
    quality: np.ndarray
    suggested: np.ndarray
    joint: np.ndarray  # p(given label i, true label j), cleanlab's estimate
    order: List[int]  # most suspect first: flagged images by quality, then the rest by quality

    @property
    def noise(self) -> float:
        """The estimated share of all labels that are wrong."""
        return float(1 - np.trace(self.joint))


def find_issues(label_ids: np.ndarray, probs: np.ndarray, files: Sequence[str]) -> Issues:
    """Confident learning on out-of-fold probabilities; `files` break ties in the order."""
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    is_issue = find_label_issues(label_ids, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(label_ids, probs, method="self_confidence")
    joint = estimate_joint(label_ids, probs)
    order = sorted(range(len(label_ids)), key=lambda i: (not is_issue[i], quality[i], files[i]))
    return Issues(np.asarray(is_issue, dtype=bool), np.asarray(quality), probs.argmax(axis=1), joint, order)


def noise_table(labels: Sequence[str], joint: np.ndarray, images: int) -> List[Dict[str, Any]]:
    """Per pair of classes (given, true), the estimated share of the given class's labels that are
    the true class, and about how many training images that is."""
    rows = []
    for i, given in enumerate(labels):
        for j, true in enumerate(labels):
            if i != j:
                share = joint[i, j] / joint[i].sum() if joint[i].sum() > 0 else 0.0
                rows.append({"given_label": given, "true_label": true, "share_of_given": round(float(share), 6),
                             "images": round(float(joint[i, j] * images), 1)})
    return rows


def warn_if_uninformed(accuracy: Dict[str, Any], label_ids: np.ndarray, near_chance: float) -> None:
    """A fold model no better than answering the largest class (within `near_chance`) gives
    probabilities that say little about any label: confident learning then flags images at random."""
    floor = float(np.bincount(label_ids).max() / len(label_ids))
    weak = {name: value for name, value in accuracy.items() if value is not None and value < floor + near_chance}
    if weak:
        print(f"warning: {', '.join(f'{n} ({v:.3f})' for n, v in weak.items())}: validation accuracy within "
              f"{near_chance * 100:.0f} points "
              f"of always answering the largest class ({floor:.3f}); their flags mean little: train the folds "
              "longer (training.num_train_epochs) and run again", file=sys.stderr)


def warn_if_errors_match_noise(accuracy: Dict[str, Any], noise: float) -> None:
    """Confident learning cannot tell a right label the fold model gets wrong from a wrong label:
    where the folds' own error rate is half the noise it estimates or more, many flags are right
    labels of hard images (bench/label_issues.py: 270 of 2000 clean labels flagged at fold
    accuracies of 0.63-0.87, and training without them cost 4.6 points)."""
    known = [value for value in accuracy.values() if value is not None]
    if not known:
        return
    error = 1 - float(np.mean(known))
    if error >= noise / 2:
        print(f"warning: the fold models' validation error ({error:.1%}) is as large as the label noise estimated "
              f"({noise:.1%}): many flagged images may be right labels the models get wrong. Look at "
              f"{LABEL_ISSUES_FIGURE} before excluding them, or train the folds longer or on more data first",
              file=sys.stderr)
