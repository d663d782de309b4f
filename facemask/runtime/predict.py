"""Classifying image files with any classifier that gives class probabilities: the rows `predict`
prints or writes (path, label under the decision rule, confidence, each class's probability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
from PIL import Image

from facemask.data.labels import resolve_positive_label
from facemask.runtime.decision import decide
from facemask.runtime.files import read_batches


class Classifier(Protocol):
    """What predict, detect and serve need of a model: its class names in id order, its input side
    (inputs are draft-decoded at twice it) and each image's class probabilities."""

    labels: List[str]
    input_side: int

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray: ...


def prediction_row(path: str, probs: np.ndarray, choice: int, labels: List[str]) -> Dict[str, Any]:
    row: Dict[str, Any] = {"path": path, "label": labels[choice], "confidence": round(float(probs[choice]), 6)}
    row.update({f"prob_{label}": round(float(v), 6) for label, v in zip(labels, probs)})
    return row


def predict_files(classifier: Classifier, paths: List[Path], batch_size: int = 32, threshold: Optional[float] = None,
                  positive_label: Optional[str] = None,
                  frame: Optional[Callable[[Path, Image.Image], Image.Image]] = None,
                  ) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """Rows of (path, label, confidence, per-class probabilities), and files skipped with the reason.

    `frame` (path, image) -> image sees each image before it is classified and gives what is
    classified: the face check of `predict` (detection/framing.py), which may crop to a face.

    With a threshold (two-label models), the positive class is predicted when its probability
    reaches it, the other class otherwise; confidence stays the predicted class's probability.
    """
    labels = classifier.labels
    positive = resolve_positive_label(labels, positive_label)
    rows: List[Dict[str, Any]] = []
    skipped: List[Tuple[str, str]] = []
    for kept, images in read_batches(paths, 2 * classifier.input_side, batch_size, skipped):
        if frame is not None:
            images = [frame(path, image) for path, image in zip(kept, images)]
        probs = classifier.probabilities(images, batch_size)
        rows += [prediction_row(str(path), p, choice, labels)
                 for path, p, choice in zip(kept, probs, decide(probs, threshold, positive))]
    return rows, skipped
