"""What an evaluated split says beyond its accuracy: slices, calibration, the worst errors, and
the operating points of the positive class (thresholds chosen on validation).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import datasets
import numpy as np

from facemask import run_folder
from facemask.evaluation import figures
from facemask.evaluation.slices import slice_metrics

logger = logging.getLogger("facemask")

CALIBRATION_BINS = 15
GALLERY_SIZE = 16
TARGET = 0.99  # precision / recall targets of the operating-point table



def calibration(probs: np.ndarray, label_ids: np.ndarray, bins: int = CALIBRATION_BINS) -> Dict[str, Any]:
    """Expected calibration error of the top-label confidence, with the reliability diagram's bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == label_ids
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        if n:
            acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
            ece += n / len(confidence) * abs(acc - conf)
            rows.append({"low": round(float(edges[b]), 4), "high": round(float(edges[b + 1]), 4), "images": n,
                         "accuracy": round(acc, 4), "confidence": round(conf, 4)})
    return {"ece": round(ece, 4), "bins": bins, "rows": rows, "images": int(len(confidence))}


def _binary_scores(pos_probs: np.ndarray, positive: np.ndarray, threshold: float) -> Dict[str, float]:
    predicted = pos_probs >= threshold
    tp = int((predicted & positive).sum())
    fp = int((predicted & ~positive).sum())
    fn = int((~predicted & positive).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "accuracy": round(float((predicted == positive).mean()), 4)}


def operating_points(validation: Dict[str, np.ndarray], test: Optional[Dict[str, np.ndarray]], pos_label: int,
                     labels: List[str]) -> Optional[Dict[str, Any]]:
    """Thresholds on the positive class's probability chosen on validation (precision >= 0.99,
    recall >= 0.99, best F1), each with its validation and test metrics. Binary tasks only."""
    from sklearn.metrics import precision_recall_curve

    if len(labels) != 2:
        return None
    p = validation["probs"][:, pos_label]
    positive = validation["label_ids"] == pos_label
    if positive.all() or not positive.any():
        return None
    precision, recall, thresholds = precision_recall_curve(positive, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    chosen = {}
    reach_precision = np.flatnonzero(precision >= TARGET)
    chosen[f"precision>={TARGET}"] = float(thresholds[reach_precision[0]]) if len(reach_precision) else None
    reach_recall = np.flatnonzero(recall >= TARGET)
    chosen[f"recall>={TARGET}"] = float(thresholds[reach_recall[-1]]) if len(reach_recall) else None
    chosen["best F1"] = float(thresholds[int(np.argmax(f1))])
    rows = []
    for name, threshold in chosen.items():
        row: Dict[str, Any] = {"name": name, "threshold": None if threshold is None else round(threshold, 6)}
        if threshold is not None:
            row["validation"] = _binary_scores(p, positive, threshold)
            if test is not None:
                row["test"] = _binary_scores(test["probs"][:, pos_label], test["label_ids"] == pos_label, threshold)
        rows.append(row)
    return {"positive_label": labels[pos_label], "chosen_on": "validation", "has_test": test is not None,
            "rows": rows}


def error_rows(probs: np.ndarray, label_ids: np.ndarray, names: List[str], labels: List[str],
               limit: int = GALLERY_SIZE) -> List[Dict[str, Any]]:
    """The misclassified samples with the highest loss, worst first."""
    loss = -np.log(np.clip(probs[np.arange(len(label_ids)), label_ids], 1e-12, 1.0))
    wrong = np.flatnonzero(probs.argmax(axis=1) != label_ids)
    worst = wrong[np.argsort(-loss[wrong], kind="stable")][:limit]
    return [{"row": int(k), "file": names[k], "true_label": labels[int(label_ids[k])],
             "predicted_label": labels[int(probs[k].argmax())], "confidence": round(float(probs[k].max()), 4),
             "loss": round(float(loss[k]), 4)} for k in worst]


def analyse_split(prefix: str, probs: np.ndarray, label_ids: np.ndarray, dataset: datasets.Dataset,
                  image_column: str, names: List[str], labels: List[str], attributes: Optional[List[Dict[str, str]]],
                  out_dir: Path, explainer: Optional[Callable[..., List[Any]]] = None) -> Dict[str, Any]:
    """Slices, calibration and the error gallery of one evaluated split, written to out_dir. With an
    `explainer` (explain.trainer_explainer) the gallery's images, and only they, get a map of the
    evidence for the class predicted, kept in errors.json too."""
    from facemask.data.images import load_image

    out: Dict[str, Any] = {}
    if attributes is not None and len(attributes) == len(label_ids):
        out["slices"] = slice_metrics(attributes, label_ids, probs.argmax(axis=1), labels)
        run_folder.write_json(run_folder.SLICES.path(out_dir, prefix), out["slices"])
    out["calibration"] = calibration(probs, label_ids)
    run_folder.write_json(run_folder.CALIBRATION.path(out_dir, prefix), out["calibration"])
    figures.reliability_png(out["calibration"], f"{prefix} split", run_folder.CALIBRATION_FIGURE.path(out_dir, prefix))
    errors = error_rows(probs, label_ids, names, labels)
    misclassified = int((probs.argmax(axis=1) != label_ids).sum())
    images = [load_image(item, 256) for item in dataset.select([e["row"] for e in errors])[image_column]]
    maps = None
    if explainer and errors:
        start = time.perf_counter()
        try:
            maps = explainer(images, [labels.index(e["predicted_label"]) for e in errors])
        except (RuntimeError, ValueError) as err:  # a map is extra: the split's files are written without it
            logger.warning("%s error gallery drawn without maps: %s", prefix, str(err).splitlines()[0])
        else:
            # Its cost depends on the model and the device (ViT-B/16 by ablation: ~48 s an image on 2 CPU cores).
            logger.info("%s error gallery: %s maps of %d images in %.1f s (data.error_maps=none skips them)",
                        prefix, maps[0].method, len(maps), time.perf_counter() - start)
    for error, found in zip(errors, maps or []):
        error["map"] = np.round(found.grid, 5).tolist()
    method = {"map_method": maps[0].method} if maps else {}
    run_folder.write_json(run_folder.ERRORS.path(out_dir, prefix),
                          {"misclassified": misclassified, "images": int(len(label_ids)), **method, "worst": errors})
    gallery = run_folder.ERRORS_FIGURE.path(out_dir, prefix)
    if errors:
        figures.error_gallery_png(images, errors, gallery, maps=maps)
    elif gallery.exists():
        gallery.unlink()  # an earlier evaluation's errors would otherwise stand for this one
    out["errors"] = errors
    return out
