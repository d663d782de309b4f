"""How a split's accuracy holds up where the camera is poor, and whether a hand reads as a mask.

- Corruptions: each image of the split (or a seeded sample of `max_images`, its size stated) as the
  model sees it (the run's processor resizes and crops it), corrupted by each of corruptions.py's
  suite at 5 severities, and predicted again: accuracy per corruption and severity with its Wilson
  interval, beside the clean accuracy of the same images.
- Occlusion: each image of the no-mask class with a face the detector finds, its mouth and nose
  covered by things that are not masks (data/occluders.py: a hand, a scarf, a phone), placed from
  the face's five landmarks at the image's own resolution: how many of the (image, occluder)
  pairs that were classified "no mask" flip to the mask class. Images without a face found are
  skipped and counted.

The predictions come from `predict(images) -> probabilities` on the model's view of each image
(already resized and cropped: only normalised again), the clean images' included, so the clean
level and every cell are measured the same way.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List, Optional

import datasets
import numpy as np
from PIL import Image

from facemask.data.images import load_image
from facemask.data.labels import resolve_positive_label
from facemask.data.occluders import KINDS, draw_occluder
from facemask.evaluation.corruptions import SEVERITIES, SUITE, corrupt
from facemask.evaluation.intervals import wilson

logger = logging.getLogger("facemask")

DEFAULT_MAX_IMAGES = 500
GALLERY_SIZE = 8


def sample_indices(total: int, max_images: Optional[int], seed: int) -> np.ndarray:
    """All of a split, or a seeded sample of `max_images` of it, in the split's order."""
    if not max_images or total <= max_images:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=max_images, replace=False))


def model_view(processor: Any) -> Callable[[Image.Image], Image.Image]:
    """An image as the model sees it before normalisation: the processor's own resize and crop."""

    def view(image: Image.Image) -> Image.Image:
        pixels = processor(images=[image.convert("RGB")], do_normalize=False, do_rescale=False,
                           return_tensors="np")["pixel_values"][0]
        return Image.fromarray(np.clip(np.rint(pixels.transpose(1, 2, 0)), 0, 255).astype(np.uint8))

    return view


def _accuracy(probs: np.ndarray, label_ids: np.ndarray) -> Dict[str, Any]:
    right = int((probs.argmax(axis=1) == label_ids).sum())
    low, high = wilson(right, len(label_ids)) or (None, None)
    return {"accuracy": right / len(label_ids), "low": low, "high": high}


def corruption_table(seen: List[Image.Image], label_ids: np.ndarray, predict: Callable[[List[Image.Image]], np.ndarray],
                     seed: int) -> Dict[str, Dict[str, Any]]:
    """{corruption: {severity "1".."5": accuracy, low, high}} on the model-view images `seen`."""
    table: Dict[str, Dict[str, Any]] = {}
    for name in SUITE:
        table[name] = {}
        for severity in SEVERITIES:
            changed = [corrupt(image, name, severity, seed) for image in seen]
            table[name][str(severity)] = _accuracy(predict(changed), label_ids)
    return table


def occlusion_test(originals: List[Image.Image], label_ids: np.ndarray, labels: List[str], detector: Any,
                   predict: Callable[[List[Image.Image]], np.ndarray], view: Callable[[Image.Image], Image.Image],
                   seed: int) -> Dict[str, Any]:
    """The no-mask images, their mouth and nose covered by each occluder: the share of those
    classified "no mask" before that flip to the mask class (with its Wilson interval)."""
    from facemask.detection.framing import largest_face_landmarks

    mask = resolve_positive_label(labels, None)
    if len(labels) != 2 or "mask" not in labels[mask].lower():
        return {"flip_rate": None, "low": None, "high": None, "images": 0, "skipped": 0,
                "reason": f"needs two classes, one of them a mask class by name; the classes are {', '.join(labels)}"}
    no_mask = 1 - mask
    chosen = [k for k, label in enumerate(label_ids) if label == no_mask]
    faces, skipped = [], 0
    for k in chosen:
        points = largest_face_landmarks(originals[k], detector)
        if points is None:
            skipped += 1
        else:
            faces.append((k, points))
    if not faces:
        return {"flip_rate": None, "low": None, "high": None, "images": 0, "skipped": skipped, "occluders": list(KINDS),
                "reason": "the detector found no face in any no-mask image"}
    rng = np.random.default_rng(seed)
    clean = predict([view(originals[k]) for k, _ in faces])
    base = clean.argmax(axis=1) == no_mask
    occluded, pairs = [], []
    for kind in KINDS:
        for (k, points), kept in zip(faces, base):
            if kept:
                occluded.append(view(draw_occluder(originals[k], points, kind, rng)))
                pairs.append((k, kind))
    by_kind: Dict[str, Dict[str, Any]] = {}
    gallery = []
    flips = 0
    if pairs:
        probs = predict(occluded)
        flipped = probs.argmax(axis=1) == mask
        flips = int(flipped.sum())
        for kind in KINDS:
            rows = [i for i, (_, named) in enumerate(pairs) if named == kind]
            count = int(flipped[rows].sum())
            low, high = wilson(count, len(rows)) or (None, None)
            by_kind[kind] = {"flip_rate": count / len(rows), "low": low, "high": high, "pairs": len(rows)}
        order = np.argsort(-probs[:, mask])
        gallery = [{"row": int(pairs[i][0]), "occluder": pairs[i][1], "probability": round(float(probs[i, mask]), 4),
                    "image": occluded[i]} for i in order[:GALLERY_SIZE] if flipped[i]]
    low, high = wilson(flips, len(pairs)) or (None, None)
    return {"flip_rate": flips / len(pairs) if pairs else None, "low": low, "high": high, "images": len(faces),
            "skipped": skipped, "pairs": len(pairs), "classified_no_mask_before": int(base.sum()),
            "occluders": list(KINDS), "by_occluder": by_kind, "mask_class": labels[mask], "gallery": gallery}


def robustness_test(dataset: datasets.Dataset, image_column: str, labels: List[str], label_ids: np.ndarray,
                    processor: Any, predict: Callable[[List[Image.Image]], np.ndarray],
                    detector: Optional[Any], max_images: Optional[int] = DEFAULT_MAX_IMAGES, seed: int = 0,
                    clean_seconds: Optional[float] = None) -> Dict[str, Any]:
    """The split's robustness record (`<split>_robustness.json` without the gallery's images)."""
    start = time.perf_counter()
    indices = sample_indices(len(dataset), max_images, seed)
    rows = dataset.select(indices.tolist())[image_column]
    originals = [load_image(item) for item in rows]
    truth = np.asarray(label_ids)[indices]
    view = model_view(processor)
    seen = [view(image) for image in originals]
    clean = _accuracy(predict(seen), truth)
    corruptions = corruption_table(seen, truth, predict, seed)
    occlusion = (occlusion_test(originals, truth, labels, detector, predict, view, seed) if detector is not None
                 else {"flip_rate": None, "low": None, "high": None, "images": 0, "skipped": 0,
                       "reason": "no face detector"})
    means = [cell["accuracy"] for severities in corruptions.values() for cell in severities.values()]
    worst = min(corruptions, key=lambda name: np.mean([c["accuracy"] for c in corruptions[name].values()]))
    seconds = time.perf_counter() - start
    record = {"images": len(indices), "of_images": len(dataset), "sampled": bool(len(indices) < len(dataset)),
              "seed": seed, "clean_accuracy": clean["accuracy"], "clean_low": clean["low"], "clean_high": clean["high"],
              "mean_corruption_accuracy": float(np.mean(means)), "worst_corruption": worst,
              "worst_corruption_accuracy": float(np.mean([c["accuracy"] for c in corruptions[worst].values()])),
              "corruptions": corruptions, "occlusion": occlusion, "seconds": round(seconds, 1)}
    if clean_seconds:
        record["cost_vs_clean_evaluation"] = round(seconds / clean_seconds, 1)
    return record
