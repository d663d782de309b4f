"""Classifying image files (`python -m facemask predict`): paths from files, folders and globs,
batched prediction with an optional threshold, and the rows written as CSV, JSON or text.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from facemask.data.images import load_image


def prediction_rows(names: List[str], label_ids: np.ndarray, probs: np.ndarray, labels: List[str],
                    digests: Optional[List[Optional[str]]] = None) -> List[Dict]:
    """A split's predictions, a row per image. `digests`: each image's content SHA-256 (its
    inspection's; empty without one), the image's identity where `file` is only a row index (drawn
    set, Hub data): label-issues matches each fold's predictions to the training images by it."""
    rows = []
    for k, (name, true, p) in enumerate(zip(names, label_ids, probs)):
        row = {"file": name, "sha256": (digests[k] if digests else None) or "", "true_label": labels[int(true)],
               "predicted_label": labels[int(p.argmax())]}
        row.update({f"prob_{label}": round(float(v), 6) for label, v in zip(labels, p)})
        rows.append(row)
    return rows


def write_rows(rows: List[Dict[str, Any]], path: Path, columns: Optional[List[str]] = None) -> None:
    """Rows as FILE.json (a list of objects) or CSV (`columns`, else the first row's keys)."""
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns or (list(rows[0]) if rows else ["file"]))
        writer.writeheader()
        writer.writerows(rows)


def collect_paths(patterns: Iterable[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Files named by PATH arguments (files, folders searched recursively, globs), and the misses."""
    found: List[Path] = []
    missing: List[Tuple[str, str]] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if matches:
                found += matches
            else:
                missing.append((pattern, "no such file, folder or matching glob"))
    unique = list(dict.fromkeys(found))
    return unique, missing


def read_input(path: Path, draft_side: Optional[int] = None) -> Tuple[Optional[Image.Image], str]:
    """(the image as upright RGB, "") or (None, why it cannot be classified): the one reading of an
    input file, and its messages, that predict and detect share."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        return load_image(path, draft_side), ""
    except (UnidentifiedImageError, ValueError, OSError, Image.DecompressionBombError) as err:
        return None, "not an image file" if isinstance(err, UnidentifiedImageError) else str(err).splitlines()[0]


def class_labels(model: Any) -> List[str]:
    return [model.config.id2label[i] for i in sorted(model.config.id2label)]


def class_probabilities(model: Any, processor: Any, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
    """Each image's class probabilities (images x classes): the processor's preprocessing, in batches."""
    model.eval()
    chunks = [np.zeros((0, len(model.config.id2label)), dtype=np.float32)]
    for start in range(0, len(images), batch_size):
        with torch.no_grad():
            pixels = processor(list(images[start:start + batch_size]), return_tensors="pt")["pixel_values"]
            logits = model(pixel_values=pixels.to(model.device, model.dtype)).logits.float()
            chunks.append(torch.softmax(logits, dim=-1).cpu().numpy())
    return np.concatenate(chunks)


def decide(probs: np.ndarray, threshold: Optional[float] = None, positive: int = 1) -> np.ndarray:
    """The predicted class of each row: the arg-max, or with a threshold (two-label models) the
    positive class where its probability reaches it and the other class elsewhere."""
    if threshold is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def predict_files(model: Any, processor: Any, paths: List[Path], batch_size: int = 32,
                  threshold: Optional[float] = None, positive_label: Optional[str] = None
                  ) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """Rows of (path, label, confidence, per-class probabilities), and files skipped with the reason.

    With a threshold (two-label models), the positive class is predicted when its probability
    reaches it, the other class otherwise; confidence stays the predicted class's probability.
    """
    from facemask.data.sources import resolve_positive_label
    from facemask.pipeline.processor import processor_image_size

    labels = class_labels(model)
    positive = resolve_positive_label(labels, positive_label)
    rows: List[Dict[str, Any]] = []
    skipped: List[Tuple[str, str]] = []
    for kept, images in read_batches(paths, 2 * processor_image_size(processor), batch_size, skipped):
        probs = class_probabilities(model, processor, images, batch_size)
        for path, p, choice in zip(kept, probs, decide(probs, threshold, positive)):
            row = {"path": str(path), "label": labels[choice], "confidence": round(float(p[choice]), 6)}
            row.update({f"prob_{label}": round(float(v), 6) for label, v in zip(labels, p)})
            rows.append(row)
    return rows, skipped


def read_batches(paths: Iterable[Path], draft_side: int, batch_size: int, skipped: List[Tuple[str, str]]
                 ) -> Iterator[Tuple[List[Path], List[Image.Image]]]:
    """The readable inputs, a batch of (paths, upright RGB images) at a time, so that a folder of any
    size holds one batch in memory; the unreadable ones are added to `skipped` with the reason."""
    kept: List[Path] = []
    images: List[Image.Image] = []
    for path in paths:
        image, reason = read_input(path, draft_side)
        if image is None:
            skipped.append((str(path), reason))
            continue
        images.append(image)
        kept.append(path)
        if len(images) == batch_size:
            yield kept, images
            kept, images = [], []
    if images:
        yield kept, images


def format_rows(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    for row in rows:
        out.write(f"{row['path']}\t{row['label']}\t{row['confidence']:.4f}\n")
    return out.getvalue()
