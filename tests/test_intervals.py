"""95% intervals: Wilson against its closed form, the vectorised stratified bootstrap against a
loop over the same resamples with scikit-learn, and against scipy's own bootstrap."""

import json
import math

import numpy as np
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, roc_auc_score

from facemask.evaluation.analysis import calibration
from facemask.evaluation.intervals import resample_counts, resampled_scores, split_intervals, wilson


def predictions(n=600, seed=1, classes=2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    probs = rng.dirichlet(np.ones(classes), n)
    probs[np.arange(n), labels] += rng.uniform(0, 1.2, n)
    probs = np.round(probs / probs.sum(axis=1, keepdims=True), 2)  # rounded: tied scores, as real ones have
    probs[:, -1] = 1 - probs[:, :-1].sum(axis=1)
    return probs, labels


@pytest.mark.parametrize("k, n", [(0, 10), (7, 10), (10, 10), (755, 800), (1, 3)])
def test_wilson_is_the_closed_form(k, n):
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson(k, n)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)
    assert wilson(0, 0) is None


@pytest.mark.parametrize("classes", [2, 3])
def test_every_resample_matches_scikit_learn_on_the_same_draws(classes):
    probs, labels = predictions(classes=classes)
    counts = next(resample_counts(labels, 40, seed=3))
    fast = resampled_scores(counts, probs, labels, pos_label=1)
    average = "binary" if classes == 2 else "macro"
    for r in range(len(counts)):
        take = np.repeat(np.arange(len(labels)), counts[r].astype(int))
        y, p = labels[take], probs[take]
        # Stratified: every resample keeps each class's count.
        assert np.array_equal(np.bincount(y, minlength=classes), np.bincount(labels, minlength=classes))
        auc = roc_auc_score(y, p[:, 1]) if classes == 2 else roc_auc_score(y, p, multi_class="ovr")
        reference = {"balanced_accuracy": balanced_accuracy_score(y, p.argmax(1)), "roc_auc": auc,
                     "f1": f1_score(y, p.argmax(1), average=average),
                     "precision": precision_score(y, p.argmax(1), average=average, zero_division=0),
                     "ece": calibration(p, y)["ece"]}
        for name, value in reference.items():
            assert fast[name][r] == pytest.approx(value, abs=1e-4 if name == "ece" else 1e-9), (name, r)


def test_bootstrap_interval_agrees_with_scipys_bootstrap():
    probs, labels = predictions(n=1000)
    ours = split_intervals(probs, labels, pos_label=1, resamples=2000)["metrics"]
    preds = probs.argmax(1)
    theirs = bootstrap((labels, preds), lambda y, p: f1_score(y, p), paired=True, vectorized=False,
                       n_resamples=2000, method="percentile", random_state=0).confidence_interval
    # scipy resamples without stratifying: the intervals agree within the bootstrap's own noise.
    assert ours["f1"]["low"] == pytest.approx(theirs.low, abs=0.01)
    assert ours["f1"]["high"] == pytest.approx(theirs.high, abs=0.01)
    assert ours["f1"]["low"] < ours["f1"]["value"] < ours["f1"]["high"]


def test_split_intervals_use_wilson_for_proportions_and_are_seeded():
    probs, labels = predictions()
    first = split_intervals(probs, labels, pos_label=1, resamples=500, seed=7)
    assert first == split_intervals(probs, labels, pos_label=1, resamples=500, seed=7)
    assert first != split_intervals(probs, labels, pos_label=1, resamples=500, seed=8)
    metrics = first["metrics"]
    assert {name: m["method"] for name, m in metrics.items()} == {
        "accuracy": "wilson", "precision": "wilson", "recall": "wilson", "balanced_accuracy": "bootstrap",
        "f1": "bootstrap", "roc_auc": "bootstrap", "ece": "bootstrap"}
    correct = int((probs.argmax(1) == labels).sum())
    assert (metrics["accuracy"]["low"], metrics["accuracy"]["high"]) == pytest.approx(wilson(correct, len(labels)),
                                                                                      abs=1e-6)
    # Three classes: precision and recall are averages over the classes, so bootstrapped.
    probs3, labels3 = predictions(classes=3)
    assert split_intervals(probs3, labels3, 1, resamples=200)["metrics"]["precision"]["method"] == "bootstrap"


def test_a_run_writes_each_splits_intervals_and_its_card_shows_them(tiny_run):
    out = tiny_run("vit").out
    for prefix in ("eval", "test"):
        payload = json.loads((out / f"{prefix}_intervals.json").read_text())
        results = json.loads((out / f"{prefix}_results.json").read_text())
        assert payload["split"] == prefix and payload["bootstrap"]["resamples"] >= 1000
        for name in ("accuracy", "balanced_accuracy", "f1", "precision", "recall"):
            assert payload["metrics"][name]["value"] == pytest.approx(results[f"{prefix}_{name}"], abs=1e-6)
    card = (out / "README.md").read_text()
    section = card.split("## Generalization (95% intervals)")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| validation") or line.startswith("| test |")]
    assert len(rows) == 2
    test_accuracy = json.loads((out / "test_intervals.json").read_text())["metrics"]["accuracy"]
    assert f"{test_accuracy['value']:.3f} ({test_accuracy['low']:.3f}-{test_accuracy['high']:.3f})" in rows[1]
