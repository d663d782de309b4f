"""Classification metrics, computed offline with scikit-learn over every prediction at once.

`evaluate.load("accuracy")` fetches a script from the Hub, which fails without a network; and the
Trainer hands `compute_metrics` all predictions, already gathered across processes, so there is
nothing to accumulate (see docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from facemask.runtime.model import softmax


def classification_report(label_ids: np.ndarray, probs: np.ndarray, labels: List[str]) -> Dict[str, Any]:
    from sklearn.metrics import classification_report as report

    return report(label_ids, probs.argmax(axis=1), labels=list(range(len(labels))), target_names=labels,
                  output_dict=True, zero_division=0)


def classification_scores(probs: np.ndarray, refs: np.ndarray, pos_label: int = 1) -> Dict[str, float]:
    """Accuracy, balanced accuracy, precision, recall, F1 (of `pos_label` for two classes, macro
    otherwise) and ROC-AUC (when every class is present), from (N, num_labels) probabilities and (N,)
    class ids."""
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


def make_compute_metrics(pos_label: int) -> Callable[[Any], Dict[str, float]]:
    """A `compute_metrics` for transformers' Trainer: `classification_scores` of its logits."""

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
