"""Near-duplicate search, duplicate groups, group-aware carving, leak resolution, shortcut rules,
calibration and operating points, on constructed inputs with known answers."""

import numpy as np
import pytest

from facemask.data.duplicates import brute_force_pairs, groups, near_pairs
from facemask.data.shortcuts import partial_shortcuts
from facemask.data.splits import carve, leaked_copies
from facemask.evaluation.analysis import calibration, error_rows, operating_points
from facemask.evaluation.counterfactuals import shortcut_verdict
from facemask.evaluation.slices import notable_slices, slice_metrics


def planted_hashes(n, bits, copies, max_flips, seed):
    rng = np.random.default_rng(seed)
    hashes = rng.random((n, bits)) < 0.5
    for _ in range(copies):
        a, b = rng.integers(n, size=2)
        hashes[b] = hashes[a]
        flips = rng.choice(bits, int(rng.integers(0, max_flips + 1)), replace=False)
        hashes[b, flips] ^= True
    return hashes


@pytest.mark.parametrize("distance", [0, 1, 5, 12, 20, 40])
def test_multi_index_search_finds_exactly_the_all_pairs_result(distance):
    hashes = planted_hashes(1500, 256, 300, distance + 4, seed=distance)
    fast, slow = near_pairs(hashes, distance), brute_force_pairs(hashes, distance)
    assert len(slow[0]) > 50  # planted pairs on both sides of the threshold
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)
    assert (fast[2] <= distance).all()


def test_groups_are_connected_components():
    assert groups(6, [(0, 1), (1, 2), (4, 5)]).tolist() == [0, 0, 0, 1, 2, 2]
    assert groups(3, []).tolist() == [0, 1, 2]


def test_carve_keeps_groups_whole_and_stratifies():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], [300, 200])
    group_ids = rng.integers(0, 150, size=500)  # groups of ~3, mixing classes now and then
    held = carve(labels, group_ids, 0.2, seed=3)
    inside = np.zeros(500, bool)
    inside[held] = True
    for g in np.unique(group_ids):
        assert len(set(inside[group_ids == g])) == 1, g
    assert 0.16 < len(held) / 500 < 0.24
    assert 0.5 < labels[held].mean() / labels.mean() < 1.5 and 0 < labels[held].mean()
    np.testing.assert_array_equal(held, carve(labels, group_ids, 0.2, seed=3))
    assert not np.array_equal(held, carve(labels, group_ids, 0.2, seed=4))


def test_carve_meets_the_fraction_per_class_with_single_images():
    labels = np.repeat([0, 1], [300, 100])
    held = carve(labels, np.arange(400), 0.15, seed=0)
    assert np.bincount(labels[held]).tolist() == [45, 15]
    assert len(carve(labels, np.arange(400), 0.1, seed=0)) == 40


def test_leaks_lose_the_training_copy_and_the_test_split_stays_whole():
    split_of = ["train", "train", "validation", "test", "test", "validation"]
    pairs = [(0, 3), (2, 4), (1, 5), (5, 1), (3, 4)]
    removed = leaked_copies(pairs, split_of, "drop")
    assert removed == {"train": {0: 3, 1: 5}, "validation": {2: 4}}
    assert leaked_copies(pairs, split_of, "keep") == {} and leaked_copies(pairs, split_of, "error") == {}


def test_partial_shortcut_rule():
    values = [{"file format": "PNG"}] * 25 + [{"file format": "JPEG"}] * 175
    labels = ["with_mask"] * 25 + ["with_mask"] * 75 + ["without_mask"] * 100
    found = partial_shortcuts(values, labels)
    assert [(s["value"], s["class"], s["images"]) for s in found] == [("PNG", "with_mask", 25)]
    assert found[0]["message"] == "file format PNG: 25 images, all with_mask (25% of with_mask)"
    # Too few images to matter.
    assert not partial_shortcuts(values[5:], labels[5:], min_images=21)
    # 96% of an imbalanced set is one class: a value holding 96% of it is no shortcut.
    imbalanced = ["a"] * 192 + ["b"] * 8
    values = [{"mode": "RGB"}] * 190 + [{"mode": "L"}] * 10
    assert not partial_shortcuts(values, imbalanced)


def test_slices_and_verdict():
    values = [{"format": "PNG"}] * 20 + [{"format": "JPEG"}] * 80
    true = np.array([0] * 20 + [0] * 40 + [1] * 40)
    pred = np.array([1] * 20 + [0] * 40 + [1] * 40)  # every PNG wrong
    slices = slice_metrics(values, true, pred, ["a", "b"])
    assert slices["overall"]["accuracy"] == 0.8
    rows = {r["value"]: r for r in notable_slices(slices)}
    assert rows["PNG"]["accuracy"] == 0.0 and rows["PNG"]["difference"] == -0.8 and rows["JPEG"]["accuracy"] == 1.0
    before = {"accuracy": 0.9, "recall": {"a": 0.9, "b": 0.9}}
    after = {"accuracy": 0.8, "recall": {"a": 0.7, "b": 0.9}}
    verdict = shortcut_verdict(["image size"], before, after)
    assert verdict["relies"] and verdict["accuracy_drop_points"] == 10.0
    assert verdict["verdict"] == ("accuracy drops 10.0 points when image size no longer tells the classes apart: "
                                  "the model relies on image size")
    assert not shortcut_verdict(["image size"], before, before)["relies"]


def test_expected_calibration_error_by_hand():
    # Two bins used: confidence 0.95 (4 images, 2 right) and 0.65 (2 images, both right).
    probs = np.array([[0.95, 0.05]] * 4 + [[0.35, 0.65]] * 2)
    labels = np.array([0, 0, 1, 1, 1, 1])
    result = calibration(probs, labels)
    assert result["ece"] == pytest.approx(4 / 6 * abs(0.5 - 0.95) + 2 / 6 * abs(1.0 - 0.65), abs=1e-4)
    assert [(r["images"], r["accuracy"]) for r in result["rows"]] == [(2, 1.0), (4, 0.5)]


def test_operating_points_are_chosen_on_validation_and_measured_on_test():
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 0, 1, 1, 1])  # class 0 is positive; its probability is 1 - p
    validation = {"probs": np.stack([1 - p, p], axis=1), "label_ids": labels}
    test = {"probs": np.array([[0.75, 0.25], [0.5, 0.5], [0.2, 0.8]]), "label_ids": np.array([0, 1, 1])}
    table = operating_points(validation, test, 0, ["with_mask", "without_mask"])
    rows = {r["name"]: r for r in table["rows"]}
    # Positives score 0.9, 0.8, 0.7, 0.4, negatives 0.6, 0.3, 0.2, 0.1: precision 1.0 starts at 0.7.
    assert rows["precision>=0.99"]["threshold"] == pytest.approx(0.7)
    assert rows["precision>=0.99"]["validation"]["recall"] == 0.75
    assert rows["recall>=0.99"]["threshold"] == pytest.approx(0.4)
    assert rows["recall>=0.99"]["validation"]["precision"] == 0.8
    assert rows["best F1"]["validation"]["f1"] >= rows["precision>=0.99"]["validation"]["f1"]
    assert rows["precision>=0.99"]["test"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    assert operating_points(validation, None, 0, ["a", "b", "c"]) is None


def test_error_rows_are_the_highest_losses():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    rows = error_rows(probs, np.array([0, 0, 0, 1]), ["a", "b", "c", "d"], ["x", "y"])
    assert [r["file"] for r in rows] == ["c", "d", "b"]
    assert rows[0] == {"row": 2, "file": "c", "true_label": "x", "predicted_label": "y", "confidence": 0.95,
                       "loss": pytest.approx(-np.log(0.05), abs=1e-4)}
