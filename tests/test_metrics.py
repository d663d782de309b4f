import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from facemask.evaluation.metrics import classification_scores, confusion, make_compute_metrics, softmax

REFS = [0, 0, 0, 1, 1, 1, 1, 0]
P1 = [0.1, 0.6, 0.55, 0.8, 0.4, 0.9, 0.7, 0.2]
PROBS = [[1 - p, p] for p in P1]


def test_binary_metrics_against_hand_computed_values():
    # Predicted 1 where p > 0.5: TP=3 (idx 3,5,6), FP=2 (idx 1,2), FN=1 (idx 4), TN=2 (idx 0,7).
    # AUC: of the 16 (positive, negative) pairs, the positive scores higher in 14.
    result = classification_scores(PROBS, REFS, pos_label=1)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["precision"] == pytest.approx(3 / 5)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert result["roc_auc"] == pytest.approx(14 / 16)


def test_positive_class_is_configurable():
    # Class 0 as positive: TP=2 (idx 0,7), FP=1 (idx 4), FN=2 (idx 1,2).
    result = classification_scores(PROBS, REFS, pos_label=0)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 4)
    assert result["f1"] == pytest.approx(4 / 7)
    assert result["roc_auc"] == pytest.approx(14 / 16)


def test_auc_is_left_out_when_one_class_is_present():
    result = classification_scores(PROBS[:3], REFS[:3])
    assert "roc_auc" not in result and result["accuracy"] == pytest.approx(1 / 3)


def test_compute_metrics_takes_trainer_logits():
    from transformers import EvalPrediction

    logits = np.log(np.asarray(PROBS))
    out = make_compute_metrics(pos_label=1)(EvalPrediction(predictions=logits, label_ids=np.asarray(REFS)))
    assert out["accuracy"] == pytest.approx(5 / 8) and out["roc_auc"] == pytest.approx(14 / 16)
    assert np.allclose(softmax(logits), PROBS)
    assert out == pytest.approx(classification_scores(softmax(logits), REFS, pos_label=1))


def test_confusion_matrix_rows_are_true_classes():
    logits = np.log(np.asarray(PROBS))
    assert confusion(np.asarray(REFS), logits, ["with_mask", "without_mask"]) == {
        "labels": ["with_mask", "without_mask"],
        "matrix": [[2, 2], [1, 3]],
    }


def test_no_module_of_the_project_imports_the_evaluate_library():
    # evaluate.py shares the library's name, and Python puts a script's folder first on sys.path:
    # a `import evaluate` in the package would get the script when run from the repository root.
    script = ("import sys, train, facemask.training.setup, facemask.evaluation.split, facemask.publish.card\n"
              "print('evaluate' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.slow  # tens of seconds: the default suite stays under ~8 minutes
def test_entry_points_run_from_the_root():
    helped = subprocess.run([sys.executable, "evaluate.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--data" in helped.stdout
    helped = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "overrides" in helped.stdout
