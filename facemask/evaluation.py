"""Evaluating a saved or Hub model on a dataset, and classifying image files."""

from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .config import ConfigError
from .data import PreparedData, label_key, load_image, load_image_folder, synthetic_dataset, with_label_ids
from .modeling import BACKEND


def load_model(model: str, revision: Optional[str] = None, backend: str = "torch") -> Tuple[Any, Any]:
    """Classifier and image processor from a run folder or a Hub id, with a clear error if neither.
    backend `onnx` / `onnx-int8`: the exported graph run by onnxruntime (see onnx_backend.py)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = Path(model).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ConfigError(f"model folder {path} has no config.json: point at a training run's output folder")
    source = str(path) if path.exists() else model
    try:
        if backend == "torch":
            classifier = AutoModelForImageClassification.from_pretrained(source, revision=revision)
        else:
            from .onnx_backend import load_onnx_classifier

            classifier = load_onnx_classifier(source, backend, revision)
        processor = AutoImageProcessor.from_pretrained(source, revision=revision, backend=BACKEND)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model not found: '{model}' is neither a local model folder nor a Hub model that could be loaded "
            f"({str(err).splitlines()[0]})"
        ) from None
    return classifier, processor


def match_labels(data_labels: List[str], id2label: Dict[int, str]) -> Dict[int, int]:
    """Map data label ids to model label ids by class name (case, spaces, - and _ ignored)."""
    model_labels = [id2label[i] for i in sorted(id2label)]
    if len(model_labels) != len(data_labels):
        raise ConfigError(
            f"the model has {len(model_labels)} labels ({', '.join(model_labels)}) but the data has "
            f"{len(data_labels)} classes ({', '.join(data_labels)}): evaluate on data with the model's classes"
        )
    by_name = {label_key(name): i for i, name in enumerate(model_labels)}
    mapping = {i: by_name.get(label_key(name)) for i, name in enumerate(data_labels)}
    unmatched = [data_labels[i] for i, j in mapping.items() if j is None]
    if unmatched or len(set(mapping.values())) != len(mapping):
        raise ConfigError(
            f"cannot match the data's classes to the model's labels by name: data has {data_labels}, model has "
            f"{model_labels}; unmatched: {unmatched or 'two classes map to one label'}. Rename the class folders "
            "to the model's label names"
        )
    return mapping  # type: ignore[return-value]


@dataclass
class EvalData:
    dataset: datasets.Dataset
    labels: List[str]
    image_column: str
    label_column: str
    source: str
    split: str


def _has_split_folders(folder: Path) -> bool:
    """A dataset folder (train/, test/, ... inside) rather than an image folder of class sub-folders."""
    return any((folder / name).is_dir() for name in ("train", "test", "validation", "valid", "val"))


def load_eval_data(data: str, split: str, num_images: int = 1000, image_size: int = 128, seed: int = 0,
                   image_column: str = "image", label_column: str = "label") -> EvalData:
    """DATA as an image folder, `synthetic`, or a Hub dataset id (its SPLIT)."""
    if data == "synthetic":
        ds = synthetic_dataset(num_images, image_size, seed)
        source = f"synthetic ({num_images} images, seed {seed})"
    elif Path(data).expanduser().is_dir() and not _has_split_folders(Path(data).expanduser()):
        folder = Path(data).expanduser()
        if not any(p.is_file() and not p.name.startswith(".") for p in folder.rglob("*")):
            raise ConfigError(f"data folder {folder} holds no images: expected one sub-folder of images per class")
        ds = load_image_folder(folder, split)
        source = str(folder)
    else:
        try:
            ds = datasets.load_dataset(data, split=split)
        except ValueError as err:
            raise ConfigError(f"{data}: {str(err).splitlines()[0]}") from None
        except Exception as err:  # FileNotFoundError, DatasetNotFoundError, ConnectionError offline
            raise ConfigError(f"data not found: '{data}' is not a folder, 'synthetic' or a loadable Hub dataset "
                              f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
        source = data
    for column in (image_column, label_column):
        if column not in ds.column_names:
            raise ConfigError(f"{source}: no column '{column}'; its columns are: {', '.join(ds.column_names)}")
    if not isinstance(ds.features[label_column], datasets.ClassLabel):
        ds = ds.class_encode_column(label_column)
    if len(ds) == 0:
        raise ConfigError(f"{source}: the {split} split is empty")
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return EvalData(ds, list(ds.features[label_column].names), image_column, label_column, source, split)


def from_prepared(prepared: PreparedData, split: str) -> EvalData:
    if split not in prepared.splits:
        raise ConfigError(f"{prepared.source}: no '{split}' split; splits are: {', '.join(prepared.splits)}")
    return EvalData(prepared.splits[split], prepared.labels, prepared.image_column, prepared.label_column,
                    prepared.source, split)


def remap_labels(data: EvalData, mapping: Dict[int, int], id2label: Dict[int, str]) -> EvalData:
    """The dataset with label ids (and ClassLabel names) of the model."""
    column = data.label_column
    ids = [mapping[i] for i in data.dataset[column]]
    names = [id2label[i] for i in sorted(id2label)]
    return EvalData(with_label_ids(data.dataset, column, ids, names), names, data.image_column, column, data.source,
                    data.split)


def sample_names(ds: datasets.Dataset, image_column: str) -> List[str]:
    """The file each sample came from, or its index for images held in memory."""
    raw = ds.cast_column(image_column, datasets.Image(decode=False))[image_column]
    return [item.get("path") or str(i) if isinstance(item, dict) else str(i) for i, item in enumerate(raw)]


def prediction_rows(names: List[str], label_ids: np.ndarray, probs: np.ndarray, labels: List[str]) -> List[Dict]:
    rows = []
    for name, true, p in zip(names, label_ids, probs):
        row = {"file": name, "true_label": labels[int(true)], "predicted_label": labels[int(p.argmax())]}
        row.update({f"prob_{label}": round(float(v), 6) for label, v in zip(labels, p)})
        rows.append(row)
    return rows


def write_rows(rows: List[Dict[str, Any]], path: Path) -> None:
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file"])
        writer.writeheader()
        writer.writerows(rows)


def classification_report(label_ids: np.ndarray, probs: np.ndarray, labels: List[str]) -> Dict[str, Any]:
    from sklearn.metrics import classification_report as report

    return report(label_ids, probs.argmax(axis=1), labels=list(range(len(labels))), target_names=labels,
                  output_dict=True, zero_division=0)


# --- prediction on files ---------------------------------------------------------------------


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


def predict_files(model: Any, processor: Any, paths: List[Path], batch_size: int = 32,
                  threshold: Optional[float] = None, positive_label: Optional[str] = None
                  ) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """Rows of (path, label, confidence, per-class probabilities), and files skipped with the reason.

    With a threshold (two-label models), the positive class is predicted when its probability
    reaches it, the other class otherwise; confidence stays the predicted class's probability.
    """
    from .data import resolve_positive_label
    from .modeling import processor_image_size

    labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    positive = resolve_positive_label(labels, positive_label)
    draft_side = 2 * processor_image_size(processor)
    rows, skipped = [], []
    images, kept = [], []
    model.eval()

    def flush() -> None:
        if not images:
            return
        with torch.no_grad():
            pixels = processor(images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
            probs = torch.softmax(model(pixel_values=pixels).logits.float(), dim=-1).cpu().numpy()
        for path, p in zip(kept, probs):
            choice = int(p.argmax()) if threshold is None else (positive if p[positive] >= threshold else 1 - positive)
            row = {"path": str(path), "label": labels[choice], "confidence": round(float(p[choice]), 6)}
            row.update({f"prob_{label}": round(float(v), 6) for label, v in zip(labels, p)})
            rows.append(row)
        images.clear()
        kept.clear()

    for path in paths:
        try:
            if path.stat().st_size == 0:
                raise ValueError("empty file")
            image = load_image(path, draft_side)
        except (UnidentifiedImageError, ValueError, OSError, Image.DecompressionBombError) as err:
            reason = "not an image file" if isinstance(err, UnidentifiedImageError) else str(err).splitlines()[0]
            skipped.append((str(path), reason))
            continue
        images.append(image)
        kept.append(path)
        if len(images) >= batch_size:
            flush()
    flush()
    return rows, skipped


def format_rows(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    for row in rows:
        out.write(f"{row['path']}\t{row['label']}\t{row['confidence']:.4f}\n")
    return out.getvalue()
