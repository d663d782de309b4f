"""The run's decision rule: the arg-max, or with --threshold (a number or a row of the run's
operating_points.json) the positive class where its probability reaches the threshold."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from facemask import run_folder
from facemask.config.schema import ConfigError
from facemask.data.labels import resolve_positive_label


def decide(probs: np.ndarray, threshold: Optional[float] = None, positive: int = 1) -> np.ndarray:
    """The predicted class of each row: the arg-max, or with a threshold (two-label models) the
    positive class where its probability reaches it and the other class elsewhere."""
    if threshold is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def threshold_from(run_dir: Path, value: str) -> float:
    """A --threshold argument: a number, or a row name of the run's operating_points.json."""
    try:
        return float(value)
    except ValueError:
        pass
    path = run_folder.OPERATING_POINTS.path(run_dir)
    if not path.is_file():
        raise ValueError(f"--threshold {value!r}: not a number, and {path} does not exist")
    table = run_folder.read_json(path)
    names = {row["name"]: row["threshold"] for row in table["rows"]}
    if value not in names:
        raise ValueError(f"--threshold {value!r}: the run's operating points are {', '.join(map(repr, names))}")
    if names[value] is None:
        raise ValueError(f"--threshold {value!r} was not reachable on the validation split")
    return float(names[value])


def decision_threshold(run_dir: Path, labels: List[str], threshold: Optional[str],
                       positive_label: Optional[str]) -> Optional[float]:
    """--threshold / --positive-label of predict, detect and serve, checked against the model's labels:
    the threshold as a number, or None for the arg-max."""
    if threshold is None and positive_label is None:
        return None
    try:
        resolve_positive_label(labels, positive_label)
        if threshold is None:
            raise ValueError("--positive-label goes with --threshold")
        if len(labels) != 2:
            raise ValueError("--threshold needs a model with two labels")
        return threshold_from(run_dir, threshold)
    except ValueError as err:
        raise ConfigError(str(err)) from None
