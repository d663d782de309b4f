"""Shortcuts: image attributes other than the face that tell the classes apart.

- `attribute_values`: each image's file format, colour mode, alpha, EXIF rotation, size bucket,
  aspect-ratio bucket and sharpness bucket (sharpness at the model's input size), from its
  inspection. The same buckets name the slices of `evaluation/slices.py`.
- `partial_shortcuts`: values that (almost) only one class has. Rule: at least
  `data.shortcut_min_images` images (default 20) with the value, at least `data.shortcut_purity`
  (default 0.95) of them in one class, and that share at least 10 points above the class's share
  of all images (so the majority class of an imbalanced set is not flagged everywhere).
- `attribute_shortcuts`: a one-attribute classifier (depth-2 decision tree) whose cross-validated
  balanced accuracy reaches `data.shortcut_threshold`: the attribute predicts the class over the
  whole set.

Whether a trained model relies on a flagged attribute is evaluation/counterfactuals.py's test.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from facemask.data.inspection import Inspection

SIZE_EDGES = [64, 128, 256, 512, 1024]
ASPECT_EDGES = [(0.75, "tall (< 0.75)"), (0.95, "portrait (0.75-0.95)"), (1.05, "square (0.95-1.05)"),
                (1.33, "landscape (1.05-1.33)"), (float("inf"), "wide (> 1.33)")]
SHARPNESS_BUCKETS = 5
PURITY_MARGIN = 0.10  # over the class's share of all images
# What a neutraliser removes: attributes that share one are tested together.
FAMILIES = {"file format": "encoding", "colour mode": "encoding", "alpha channel": "encoding",
            "EXIF rotation": "exif", "image size": "resolution", "width": "resolution", "height": "resolution",
            "sharpness": "resolution", "aspect ratio": "aspect"}


def size_bucket(width: int, height: int) -> str:
    side = min(width, height)
    low = 0
    for edge in SIZE_EDGES:
        if side < edge:
            return f"shorter side {low}-{edge - 1} px" if low else f"shorter side < {edge} px"
        low = edge
    return f"shorter side >= {SIZE_EDGES[-1]} px"


def aspect_bucket(width: int, height: int) -> str:
    ratio = width / height if height else 0.0
    return next(name for edge, name in ASPECT_EDGES if ratio < edge)


def sharpness_edges(values: Sequence[Optional[float]]) -> List[float]:
    """Quintile edges of the set's sharpness (4 inner edges), the buckets' boundaries."""
    known = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(known):
        return []
    return [round(float(q), 3) for q in np.quantile(known, np.linspace(0, 1, SHARPNESS_BUCKETS + 1)[1:-1])]


def sharpness_bucket(value: Optional[float], edges: List[float]) -> str:
    if value is None or not edges:
        return "unknown"
    k = int(np.searchsorted(edges, value, side="right"))
    share = 100 // SHARPNESS_BUCKETS
    if k == 0:
        return f"lowest {share}% (< {edges[0]:g})"
    if k == len(edges):
        return f"highest {share}% (>= {edges[-1]:g})"
    return f"{k * share}-{(k + 1) * share}% ({edges[k - 1]:g}-{edges[k]:g})"


def attribute_values(found: Inspection, edges: List[float]) -> Dict[str, str]:
    """The image's value (or bucket) for each audited attribute."""
    return {
        "file format": found.format or "unknown",
        "colour mode": found.mode or "unknown",
        "alpha channel": "alpha" if found.mode and ("A" in found.mode or found.mode in ("P", "PA")) else "no alpha",
        "EXIF rotation": "rotated" if found.exif_rotated else "upright",
        "image size": size_bucket(found.width, found.height),
        "aspect ratio": aspect_bucket(found.width, found.height),
        "sharpness": sharpness_bucket(found.sharpness, edges),
    }


def partial_shortcuts(values: List[Dict[str, str]], labels: List[str], min_images: int = 20,
                      purity: float = 0.95) -> List[Dict[str, Any]]:
    """Attribute values that (almost) only one class has; see the module's rule."""
    totals = Counter(labels)
    n = len(labels)
    found = []
    if len(totals) < 2:
        return found
    for attribute in (values[0] if values else {}):
        by_value: Dict[str, Counter] = defaultdict(Counter)
        for v, label in zip(values, labels):
            by_value[v[attribute]][label] += 1
        if len(by_value) < 2:
            continue
        for value, counts in sorted(by_value.items()):
            images = sum(counts.values())
            label, top = counts.most_common(1)[0]
            share = top / images
            if images >= min_images and share >= purity and share >= totals[label] / n + PURITY_MARGIN:
                amount = "all" if top == images else f"{100 * share:.0f}%"
                of_class = top / totals[label]
                found.append({
                    "attribute": attribute, "value": value, "images": images, "class": label,
                    "class_share": round(share, 4), "share_of_class": round(of_class, 4),
                    "message": f"{attribute} {value}: {images} images, {amount} {label} "
                               f"({100 * of_class:.0f}% of {label})",
                })
    return found


def numeric_features(found: List[Inspection]) -> Dict[str, List[Any]]:
    """The attributes a one-attribute classifier is tried on (raw values where they are numbers)."""
    return {
        "file format": [i.format or "unknown" for i in found],
        "colour mode": [i.mode or "unknown" for i in found],
        "alpha channel": [bool(i.mode and ("A" in i.mode or i.mode == "P")) for i in found],
        "width": [i.width for i in found],
        "height": [i.height for i in found],
        "aspect ratio": [round(i.width / i.height, 3) if i.height else 0.0 for i in found],
        "EXIF rotation": [i.exif_rotated for i in found],
        "sharpness": [i.sharpness if i.sharpness is not None else -1.0 for i in found],
    }


def attribute_shortcuts(found: List[Inspection], labels: List[str], threshold: float,
                        seed: int) -> List[Dict[str, Any]]:
    """Attributes that predict the class alone: a one-feature classifier's cross-validated balanced
    accuracy, with the per-class distributions behind it."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < 2:
        return []
    folds = min(5, min(counts.values()))
    shortcuts = []
    for name, values in numeric_features(found).items():
        categorical = not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if len(set(values)) < 2:
            continue
        if categorical:
            categories = sorted(set(map(str, values)))
            x = np.array([[categories.index(str(v))] for v in values])
        else:
            x = np.array(values, dtype=float).reshape(-1, 1)
        tree = DecisionTreeClassifier(max_depth=2, random_state=seed)
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        score = float(np.mean(cross_val_score(tree, x, labels, cv=cv, scoring="balanced_accuracy")))
        if score >= threshold:
            per_class: Dict[str, Any] = {}
            for label in sorted(counts):
                own = [v for v, lab in zip(values, labels) if lab == label]
                if categorical:
                    per_class[label] = {str(k): n for k, n in Counter(map(str, own)).most_common(5)}
                else:
                    per_class[label] = {"min": min(own), "median": float(np.median(own)), "max": max(own)}
            shortcuts.append({"attribute": name, "balanced_accuracy": round(score, 4), "per_class": per_class})
    return shortcuts
