"""The shortcut reliance test: each flagged attribute family neutralised in every image of a split
(re-encoded, EXIF applied, downscaled and back, centre-cropped), the split predicted again, and
the accuracy and recall before and after compared.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional

import datasets
import numpy as np
from PIL import Image, ImageOps

from facemask.data.inspection import Inspection, read_bytes, sharpness
from facemask.data.shortcuts import FAMILIES
from facemask.evaluation.slices import slice_metrics

logger = logging.getLogger("facemask")


def _counterfactual(dataset: datasets.Dataset, image_column: str, family: str, draft_side: int,
                    side: Optional[int]) -> datasets.Dataset:
    def change(batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        out = []
        for item in batch[image_column]:
            out.append({"bytes": neutralise(read_bytes(item), family, draft_side, side), "path": None})
        return {image_column: out}

    key = hashlib.sha256(f"{dataset._fingerprint}/{family}/{draft_side}/{side}/1".encode()).hexdigest()[:16]
    processes = min(os.cpu_count() or 1, max(1, len(dataset) // 200))
    return dataset.map(change, batched=True, batch_size=32, num_proc=processes if processes > 1 else None,
                       features=dataset.features, new_fingerprint=key, desc=f"counterfactual ({family})")


def shortcut_tests(flagged: List[str], prefix: str, dataset: datasets.Dataset, image_column: str,
                   inspections: List[Inspection], labels: List[str], label_ids: np.ndarray, probs: np.ndarray,
                   predict: Callable[[datasets.Dataset, str], np.ndarray], image_side: int) -> List[Dict[str, Any]]:
    """For each family of flagged attributes: accuracy and recall on the split, and on a copy of it
    in which those attributes are neutralised for every image (see `neutralise` below)."""
    families: Dict[str, List[str]] = defaultdict(list)
    for attribute in flagged:
        if attribute in FAMILIES:
            families[FAMILIES[attribute]].append(attribute)
    draft_side = 2 * image_side
    before = slice_metrics([], label_ids, probs.argmax(axis=1), labels)["overall"]
    names = [labels[k] for k in label_ids]
    results = []
    for family, attributes in families.items():
        side = None
        if family == "resolution":
            sharper = max(set(names), key=lambda c: np.median([f.sharpness or 0 for f, n in zip(inspections, names)
                                                                if n == c]))
            rows = [k for k, n in enumerate(names) if n == sharper][:32]
            sample = [read_bytes(item) for item in dataset.select(rows)[image_column]]
            side = resolution_side(inspections, names, attributes, image_side, sample, draft_side)
        changed = _counterfactual(dataset, image_column, family, draft_side, side)
        after_probs = predict(changed, f"{prefix}-{family}")
        after = slice_metrics([], label_ids, after_probs.argmax(axis=1), labels)["overall"]
        result = {"attributes": attributes, "neutralised_by": neutraliser_description(family, side),
                  "split": prefix, "images": int(len(label_ids)), "before": before, "after": after,
                  **shortcut_verdict(attributes, before, after)}
        logger.info("shortcut test (%s): %s", ", ".join(attributes), result["verdict"])
        results.append(result)
    return results


RELIANCE_POINTS = 2.0  # an accuracy drop of at least this many points counts as reliance


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
    from facemask.data.images import to_rgb

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
