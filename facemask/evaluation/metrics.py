"""Classification metrics through the `evaluate` library's Metric API, computed offline.

`evaluate.load("accuracy")` fetches a script from the Hub, which fails without a network, so the
metrics are a local `evaluate.Metric` subclass backed by scikit-learn.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List

import datasets
import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_report(label_ids: np.ndarray, probs: np.ndarray, labels: List[str]) -> Dict[str, Any]:
    from sklearn.metrics import classification_report as report

    return report(label_ids, probs.argmax(axis=1), labels=list(range(len(labels))), target_names=labels,
                  output_dict=True, zero_division=0)


from facemask import REPO

_REPO_ROOT = REPO


def _is_repo_root(entry: str) -> bool:
    try:
        return Path(entry or ".").resolve() == _REPO_ROOT
    except OSError:
        return False


def import_evaluate_library() -> ModuleType:
    """The `evaluate` library, even where this repository's `evaluate.py` shadows it.

    Python puts a script's folder first on sys.path, so `python train.py`, `python evaluate.py`
    and pytest run from the repository root would import our entry point as `evaluate`. The
    library is looked up on sys.path without the repository root and registered under its own
    name, replacing the entry point there if something imported it first.
    """
    loaded = sys.modules.get("evaluate")
    if loaded is not None and hasattr(loaded, "EvaluationModule"):
        return loaded
    search_path = [entry for entry in sys.path if not _is_repo_root(entry)]
    spec = importlib.machinery.PathFinder.find_spec("evaluate", search_path)
    if spec is None or spec.loader is None:
        raise ImportError("the `evaluate` library is not installed: run pip install -r requirements.txt")
    shadow = sys.modules.pop("evaluate", None)
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if shadow is not None:
            sys.modules["evaluate"] = shadow
        else:
            sys.modules.pop("evaluate", None)
        raise
    return module


evaluate = import_evaluate_library()


class ClassificationMetrics(evaluate.Metric):
    """Accuracy, precision, recall, F1 and ROC-AUC from class probabilities.

    Binary tasks score the `pos_label` class; more classes use macro averages and one-vs-rest AUC.
    ROC-AUC is left out when the references hold a single class, where it is undefined.
    """

    def _info(self) -> Any:
        return evaluate.MetricInfo(
            description="Accuracy, precision, recall, F1 and ROC-AUC for image classification.",
            citation="",
            inputs_description="predictions: per-class probabilities; references: class ids.",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions: List[List[float]], references: List[int], pos_label: int = 1) -> Dict[str, float]:
        return classification_scores(np.asarray(predictions, dtype=np.float64), np.asarray(references), pos_label)


def classification_scores(probs: np.ndarray, refs: np.ndarray, pos_label: int = 1) -> Dict[str, float]:
    """ClassificationMetrics' scores from (N, num_labels) probabilities and (N,) class ids."""
    probs = np.asarray(probs, dtype=np.float64)
    refs = np.asarray(refs, dtype=np.int64)
    num_labels = probs.shape[1]
    preds = probs.argmax(axis=1)
    binary = num_labels == 2
    precision, recall, f1, _ = precision_recall_fscore_support(
        refs,
        preds,
        labels=list(range(num_labels)),
        average="binary" if binary else "macro",
        pos_label=pos_label if binary else 1,
        zero_division=0,
    )
    result = {
        "accuracy": float(accuracy_score(refs, preds)),
        # Mean recall over the classes present: what accuracy hides on an imbalanced split.
        "balanced_accuracy": float(balanced_accuracy_score(refs, preds)),
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
    }
    if len(np.unique(refs)) == num_labels:
        if binary:
            result["roc_auc"] = float(roc_auc_score(refs == pos_label, probs[:, pos_label]))
        else:
            result["roc_auc"] = float(roc_auc_score(refs, probs, multi_class="ovr", labels=list(range(num_labels))))
    return result


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def make_compute_metrics(pos_label: int) -> Callable[[Any], Dict[str, float]]:
    """A `compute_metrics` for transformers' Trainer: ClassificationMetrics' scores.

    The Trainer hands over every prediction at once, already gathered across processes, so they
    are scored directly: `Metric.compute` would first encode each sample through datasets'
    features in Python (~35 us a sample, 3% of the tiny ViT's evaluation at 96 px here and more
    for a fast model on a GPU) only to accumulate what is already whole.
    """

    def compute_metrics(eval_pred: Any) -> Dict[str, float]:
        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        return classification_scores(softmax(np.asarray(logits)), labels, pos_label)

    return compute_metrics


def confusion(labels: np.ndarray, logits: np.ndarray, names: List[str]) -> Dict[str, Any]:
    """Rows are true classes, columns predicted ones, both in label-id order."""
    matrix = confusion_matrix(labels, np.asarray(logits).argmax(axis=-1), labels=list(range(len(names))))
    return {"labels": list(names), "matrix": matrix.tolist()}
