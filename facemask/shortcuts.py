"""Shortcuts: image attributes other than the face that tell the classes apart.

- `attribute_values`: each image's file format, colour mode, alpha, EXIF rotation, size bucket,
  aspect-ratio bucket and sharpness bucket (sharpness at the model's input size), from its
  inspection. The same buckets name the slices of `slice_metrics`.
- `partial_shortcuts`: values that (almost) only one class has. Rule: at least
  `data.shortcut_min_images` images (default 20) with the value, at least `data.shortcut_purity`
  (default 0.95) of them in one class, and that share at least 10 points above the class's share
  of all images (so the majority class of an imbalanced set is not flagged everywhere).
- `attribute_shortcuts`: a one-attribute classifier (depth-2 decision tree) whose cross-validated
  balanced accuracy reaches `data.shortcut_threshold`: the attribute predicts the class over the
  whole set.
- `counterfactual`: a copy of a split in which a flagged attribute no longer tells the classes
  apart, for the shortcut reliance test (see `shortcut_verdict`).
"""

from __future__ import annotations

import io
from collections import Counter, defaultdict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

from .inspection import Inspection, sharpness

SIZE_EDGES = [64, 128, 256, 512, 1024]
ASPECT_EDGES = [(0.75, "tall (< 0.75)"), (0.95, "portrait (0.75-0.95)"), (1.05, "square (0.95-1.05)"),
                (1.33, "landscape (1.05-1.33)"), (float("inf"), "wide (> 1.33)")]
SHARPNESS_BUCKETS = 5
PURITY_MARGIN = 0.10  # over the class's share of all images
# What a neutraliser removes: attributes that share one are tested together.
FAMILIES = {"file format": "encoding", "colour mode": "encoding", "alpha channel": "encoding",
            "EXIF rotation": "exif", "image size": "resolution", "width": "resolution", "height": "resolution",
            "sharpness": "resolution", "aspect ratio": "aspect"}
RELIANCE_POINTS = 2.0  # an accuracy drop of at least this many points counts as reliance


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


# --- slices ---------------------------------------------------------------------------------


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


# --- counterfactuals ------------------------------------------------------------------------


def _downscale_and_back(image: Image.Image, side: int) -> Image.Image:
    width, height = image.size
    short = min(width, height)
    if short <= side:
        return image
    small = image.resize((max(1, round(width * side / short)), max(1, round(height * side / short))),
                         Image.Resampling.LANCZOS)
    return small.resize((width, height), Image.Resampling.BICUBIC)


def _decoded(data: bytes, draft_side: int) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft(image.mode, (draft_side, draft_side))  # as the loader and the cache decode it
    image.load()
    return image


def _save(image: Image.Image, fmt: Optional[str], exif: Optional[Image.Exif] = None) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG" and image.mode in ("RGB", "L", "CMYK"):
        image.save(buffer, format="JPEG", quality=95, **({"exif": exif.tobytes()} if exif else {}))
    else:
        if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I"):
            image = image.convert("RGB")
        image.save(buffer, format="PNG", compress_level=1, **({"exif": exif.tobytes()} if exif else {}))
    return buffer.getvalue()


def neutralise(data: bytes, family: str, draft_side: int, side: Optional[int] = None) -> bytes:
    """One image with the attribute family removed, everything else kept as far as the format allows."""
    from .data import to_rgb

    image = _decoded(data, draft_side)
    fmt, exif = image.format, image.getexif()
    if family == "encoding":
        buffer = io.BytesIO()
        to_rgb(image).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()
    if family == "exif":
        upright = ImageOps.exif_transpose(image)
        return _save(upright, fmt)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "transparency" in image.info or "A" in image.mode else "RGB")
    if family == "resolution":
        return _save(_downscale_and_back(image, int(side or 1)), fmt, exif or None)
    if family == "aspect":
        width, height = image.size
        short = min(width, height)
        left, top = (width - short) // 2, (height - short) // 2
        return _save(image.crop((left, top, left + short, top + short)), fmt, exif or None)
    raise ValueError(f"no neutraliser for {family!r}")


def resolution_side(found: List[Inspection], labels: List[str], attributes: List[str], image_side: int,
                    sample_images: Optional[List[bytes]] = None, draft_side: int = 0) -> int:
    """The side every image is downscaled to (and back) for the resolution family.

    Size: the smaller class's median shorter side. Sharpness: the side at which the sharper class's
    median sharpness (at the model's side) comes closest to the blurrier class's, found on a sample
    of the sharper class's images. With both, the smaller side.
    """
    by_class: Dict[str, List[Inspection]] = defaultdict(list)
    for f, label in zip(found, labels):
        by_class[label].append(f)
    sides = []
    if any(a in attributes for a in ("image size", "width", "height")):
        medians = [float(np.median([min(f.width, f.height) for f in own])) for own in by_class.values()]
        sides.append(int(min(medians)))
    if "sharpness" in attributes and sample_images:
        medians = {label: float(np.median([f.sharpness for f in own if f.sharpness is not None] or [0]))
                   for label, own in by_class.items()}
        target = min(medians.values())
        ladder = sorted({max(4, int(round(image_side * 0.8 ** k))) for k in range(1, 16)}, reverse=True)
        best, best_gap = image_side, float("inf")
        for candidate in ladder:
            values = [sharpness(_downscale_and_back(_decoded(b, draft_side).convert("RGB"), candidate), image_side)
                      for b in sample_images]
            gap = abs(float(np.median(values)) - target)
            if gap < best_gap:
                best, best_gap = candidate, gap
        sides.append(best)
    return max(4, min(sides)) if sides else image_side


def neutraliser_description(family: str, side: Optional[int] = None) -> str:
    return {
        "encoding": "every image re-encoded as an RGB JPEG (quality 90), alpha composited on grey",
        "exif": "every image's EXIF orientation applied to its pixels and the tag dropped",
        "resolution": f"every image downscaled to a {side} px shorter side and back to its size",
        "aspect": "every image centre-cropped to a square",
    }[family]


def shortcut_verdict(attributes: List[str], before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    """Accuracy and recall before and after neutralising, and the one-line verdict."""
    what = " and ".join(attributes)
    verb = "no longer tell" if len(attributes) > 1 else "no longer tells"
    drop = 100 * (before["accuracy"] - after["accuracy"])
    recall_drops = {k: round(100 * (before["recall"][k] - after["recall"][k]), 2)
                    for k in before["recall"] if before["recall"][k] is not None and after["recall"][k] is not None}
    relies = drop >= RELIANCE_POINTS or any(d >= 2 * RELIANCE_POINTS for d in recall_drops.values())
    if relies:
        verdict = (f"accuracy drops {drop:.1f} points when {what} {verb} the classes apart: "
                   f"the model relies on {what}")
    else:
        verdict = (f"accuracy changes by {0.0 - drop + 0.0:+.1f} points when {what} {verb} the classes apart: "
                   f"no measurable reliance on {what}")
    return {"accuracy_drop_points": round(drop, 2), "recall_drop_points": recall_drops, "relies": relies,
            "verdict": verdict}
