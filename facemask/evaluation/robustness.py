"""How a split's accuracy holds up where the camera is poor, and whether a hand reads as a mask.

- Corruptions: each image of the split (or a seeded sample of `max_images`, its size stated) as the
  model sees it (the run's processor resizes and crops it), corrupted by each of corruptions.py's
  suite at 5 severities, and predicted again: accuracy per corruption and severity with its Wilson
  interval, beside the clean accuracy of the same images.
- Occlusion: each image of the no-mask class with a face the detector finds, its mouth and nose
  covered by things that are not masks (data/occluders.py: a hand, a scarf, a phone), placed from
  the face's five landmarks at the image's own resolution, one occluder at a time: of the faces
  classified "no mask", the share that any occluder flips to the mask class, and each occluder's
  own rate. Images without a face found are skipped and counted.

The predictions come from `predict(images) -> probabilities` on the model's view of each image
(already resized and cropped: only normalised again), the clean images' included, so the clean
level and every cell are measured the same way.
"""

from __future__ import annotations

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
    """The no-mask images, their mouth and nose covered by each occluder in turn: of those the model
    read as "no mask" before (`tested`), the share that any occluder flips to the mask class, with
    its Wilson interval, and each occluder's own rate. `images`: the faces found; `skipped`: the
    no-mask images without one. A gallery row is the image's index in `originals`."""
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
    tested = int(base.sum())
    if not pairs:
        return {"flip_rate": None, "low": None, "high": None, "images": len(faces), "skipped": skipped,
                "tested": 0, "occluders": list(KINDS), "mask_class": labels[mask],
                "reason": "the model read none of the no-mask faces found as no mask to begin with"}
    probs = predict(occluded)
    flipped = probs.argmax(axis=1) == mask
    by_kind: Dict[str, Dict[str, Any]] = {}
    for kind in KINDS:  # each occluder once per image: its pairs are independent trials
        rows = [i for i, (_, named) in enumerate(pairs) if named == kind]
        count = int(flipped[rows].sum())
        low, high = wilson(count, len(rows)) or (None, None)
        by_kind[kind] = {"flip_rate": count / len(rows), "low": low, "high": high, "images": len(rows)}
    # The headline counts images, not (image, occluder) pairs, whose three draws on one face are
    # not independent: an image flips when any occluder turns it into a mask.
    any_flip = {k for (k, _), hit in zip(pairs, flipped) if hit}
    low, high = wilson(len(any_flip), tested) or (None, None)
    order = np.argsort(-probs[:, mask])
    gallery = [{"row": int(pairs[i][0]), "occluder": pairs[i][1], "probability": round(float(probs[i, mask]), 4),
                "image": occluded[i]} for i in order[:GALLERY_SIZE] if flipped[i]]
    return {"flip_rate": len(any_flip) / tested, "low": low, "high": high, "images": len(faces), "skipped": skipped,
            "tested": tested, "occluders": list(KINDS), "by_occluder": by_kind, "mask_class": labels[mask],
            "gallery": gallery}


def robustness_test(dataset: datasets.Dataset, image_column: str, labels: List[str], label_ids: np.ndarray,
                    processor: Any, predict: Callable[[List[Image.Image]], np.ndarray],
                    detector: Optional[Any], max_images: Optional[int] = DEFAULT_MAX_IMAGES,
                    seed: int = 0) -> Dict[str, Any]:
    """The split's robustness record (`<split>_robustness.json` without the gallery's images).
    `seconds` times its stages; `cost_vs_clean` is the whole against predicting the clean sample
    once, the same way: what the test multiplies an evaluation of these images by."""
    stages: Dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[stage] = round(now - clock, 2)
        clock = now

    indices = sample_indices(len(dataset), max_images, seed)
    rows = dataset.select(indices.tolist())[image_column]
    originals = [load_image(item) for item in rows]
    truth = np.asarray(label_ids)[indices]
    view = model_view(processor)
    seen = [view(image) for image in originals]
    lap("decode")
    clean = _accuracy(predict(seen), truth)
    lap("clean")
    corruptions = corruption_table(seen, truth, predict, seed)
    lap("corruptions")
    occlusion = (occlusion_test(originals, truth, labels, detector, predict, view, seed) if detector is not None
                 else {"flip_rate": None, "low": None, "high": None, "images": 0, "skipped": 0,
                       "reason": "no face detector"})
    for flipped in occlusion.get("gallery", []):
        flipped["row"] = int(indices[flipped["row"]])  # the split's row, not the sample's
    lap("occlusion")
    means = {name: float(np.mean([c["accuracy"] for c in cells.values()])) for name, cells in corruptions.items()}
    worst = min(means, key=means.get)
    total = sum(stages.values())
    return {"images": len(indices), "of_images": len(dataset), "sampled": bool(len(indices) < len(dataset)),
            "seed": seed, "clean_accuracy": clean["accuracy"], "clean_low": clean["low"], "clean_high": clean["high"],
            "mean_corruption_accuracy": float(np.mean(list(means.values()))), "worst_corruption": worst,
            "worst_corruption_accuracy": means[worst], "corruption_means": means, "corruptions": corruptions,
            "occlusion": occlusion,
            "seconds": {**stages, "total": round(total, 1)},
            "cost_vs_clean": round(total / max(stages["clean"], 1e-3), 1)}
