import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from facemask.evaluation.metrics import ClassificationMetrics, confusion, make_compute_metrics, softmax

REFS = [0, 0, 0, 1, 1, 1, 1, 0]
P1 = [0.1, 0.6, 0.55, 0.8, 0.4, 0.9, 0.7, 0.2]
PROBS = [[1 - p, p] for p in P1]


def test_binary_metrics_against_hand_computed_values():
    # Predicted 1 where p > 0.5: TP=3 (idx 3,5,6), FP=2 (idx 1,2), FN=1 (idx 4), TN=2 (idx 0,7).
    # AUC: of the 16 (positive, negative) pairs, the positive scores higher in 14.
    result = ClassificationMetrics(keep_in_memory=True).compute(predictions=PROBS, references=REFS, pos_label=1)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["precision"] == pytest.approx(3 / 5)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["f1"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert result["roc_auc"] == pytest.approx(14 / 16)


def test_positive_class_is_configurable():
    # Class 0 as positive: TP=2 (idx 0,7), FP=1 (idx 4), FN=2 (idx 1,2).
    result = ClassificationMetrics(keep_in_memory=True).compute(predictions=PROBS, references=REFS, pos_label=0)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 4)
    assert result["f1"] == pytest.approx(4 / 7)
    assert result["roc_auc"] == pytest.approx(14 / 16)


def test_metric_accumulates_batches_through_evaluate_api():
    metric = ClassificationMetrics(keep_in_memory=True)
    metric.add_batch(predictions=PROBS[:5], references=REFS[:5])
    metric.add_batch(predictions=PROBS[5:], references=REFS[5:])
    assert metric.compute(pos_label=1)["accuracy"] == pytest.approx(5 / 8)


def test_auc_is_left_out_when_one_class_is_present():
    result = ClassificationMetrics(keep_in_memory=True).compute(predictions=PROBS[:3], references=REFS[:3])
    assert "roc_auc" not in result and result["accuracy"] == pytest.approx(1 / 3)


def test_compute_metrics_takes_trainer_logits():
    from transformers import EvalPrediction

    logits = np.log(np.asarray(PROBS))
    out = make_compute_metrics(pos_label=1)(EvalPrediction(predictions=logits, label_ids=np.asarray(REFS)))
    assert out["accuracy"] == pytest.approx(5 / 8) and out["roc_auc"] == pytest.approx(14 / 16)
    assert np.allclose(softmax(logits), PROBS)
    through_evaluate = ClassificationMetrics(keep_in_memory=True).compute(predictions=softmax(logits), references=REFS,
                                                                          pos_label=1)
    assert out == pytest.approx(through_evaluate)


def test_confusion_matrix_rows_are_true_classes():
    logits = np.log(np.asarray(PROBS))
    assert confusion(np.asarray(REFS), logits, ["with_mask", "without_mask"]) == {
        "labels": ["with_mask", "without_mask"],
        "matrix": [[2, 2], [1, 3]],
    }


def run_in_repo(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_repo_evaluate_py_really_shadows_the_library_from_the_root():
    # The hazard the loader exists for: from the repository root, `evaluate` resolves to our script.
    out = run_in_repo("import importlib.util; print(importlib.util.find_spec('evaluate').origin)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(REPO / "evaluate.py")


def test_metrics_get_the_library_when_run_from_the_root():
    out = run_in_repo(
        "import facemask.evaluation.metrics as m, evaluate, sys\n"
        "assert evaluate is m.evaluate and hasattr(evaluate, 'Metric'), evaluate\n"
        "print(evaluate.__file__)"
    )
    assert out.returncode == 0, out.stderr
    assert "site-packages" in out.stdout and str(REPO / "evaluate.py") not in out.stdout


def test_importing_the_script_by_name_still_leaves_the_library():
    # `import evaluate` from the root runs our script, whose package import puts the library in
    # its place: afterwards the name means the library for everyone.
    out = run_in_repo(
        "import sys\n"
        "import evaluate\n"
        "import facemask.evaluation.metrics as m\n"
        "assert hasattr(evaluate, 'Metric') and sys.modules['evaluate'] is evaluate is m.evaluate\n"
        "print(m.ClassificationMetrics(keep_in_memory=True).compute(predictions=[[0.2, 0.8]], references=[1]))"
    )
    assert out.returncode == 0, out.stderr
    assert "'accuracy': 1.0" in out.stdout


@pytest.mark.slow  # tens of seconds: the default suite stays under ~8 minutes
def test_entry_points_run_from_the_root():
    helped = subprocess.run([sys.executable, "evaluate.py", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--data" in helped.stdout
    helped = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "overrides" in helped.stdout
