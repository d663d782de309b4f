"""Accuracy and per-class recall per value of each image attribute (format, mode, size, aspect,
sharpness bucket), and the slices that differ enough from the whole split to show on the card.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np


def _scores(true: np.ndarray, pred: np.ndarray, labels: List[str]) -> Dict[str, Any]:
    recall = {}
    for k, name in enumerate(labels):
        own = true == k
        recall[name] = round(float((pred[own] == k).mean()), 4) if own.any() else None
    return {"images": int(len(true)), "accuracy": round(float((true == pred).mean()), 4) if len(true) else None,
            "recall": recall}


def slice_metrics(values: List[Dict[str, str]], true: Sequence[int], pred: Sequence[int],
                  labels: List[str]) -> Dict[str, Any]:
    """Accuracy and each class's recall for the whole split and per value of each attribute."""
    true, pred = np.asarray(true), np.asarray(pred)
    out: Dict[str, Any] = {"overall": _scores(true, pred, labels), "attributes": {}}
    for attribute in (values[0] if values else {}):
        column = np.asarray([v[attribute] for v in values])
        out["attributes"][attribute] = [
            {"value": str(value), **_scores(true[column == value], pred[column == value], labels)}
            for value in sorted(set(column.tolist()))
        ]
    return out


def notable_slices(slices: Dict[str, Any], margin: float = 0.05, min_images: int = 20) -> List[Dict[str, Any]]:
    """Slices of at least `min_images` whose accuracy differs from the whole by more than `margin`."""
    overall = slices["overall"]["accuracy"]
    rows = []
    for attribute, entries in slices["attributes"].items():
        if len(entries) < 2:
            continue
        for entry in entries:
            if entry["images"] >= min_images and abs(entry["accuracy"] - overall) > margin:
                rows.append({"attribute": attribute, **entry, "difference": round(entry["accuracy"] - overall, 4)})
    return rows
