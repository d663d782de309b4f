"""label-issues' statistics on arrays, without training (facemask/evaluation/label_quality.py):
confident learning finds labels flipped in a synthetic probability matrix, the out-of-fold
assembly refuses folds that miss, repeat or add images, and the warnings fire at their thresholds."""

import numpy as np
import pytest

from facemask.evaluation.label_quality import (OutOfFoldError, assemble_out_of_fold, find_issues, noise_table,
                                               warn_if_errors_match_noise, warn_if_uninformed)

LABELS = ["with_mask", "without_mask", "incorrect_mask"]


def noisy_labels(images=300, flipped=24, seed=0):
    """True classes, out-of-fold probabilities a fair model gives them (its class likely, never
    certain), and given labels with `flipped` of them changed to another class, the other class
    chosen at random."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, len(LABELS), images)
    confidence = rng.uniform(0.7, 0.95, images)
    probs = np.full((images, len(LABELS)), 0.0)
    probs[:] = ((1 - confidence) / (len(LABELS) - 1))[:, None]
    probs[np.arange(images), true] = confidence
    wrong = rng.choice(images, flipped, replace=False)
    given = true.copy()
    given[wrong] = (true[wrong] + rng.integers(1, len(LABELS), flipped)) % len(LABELS)
    return true, given, probs, wrong


def test_confident_learning_finds_the_flipped_labels_and_ranks_them_first():
    true, given, probs, wrong = noisy_labels()
    issues = find_issues(given, probs, [f"{i:04d}.png" for i in range(len(given))])
    assert set(np.flatnonzero(issues.is_issue)) == set(wrong.tolist())
    assert set(issues.order[:len(wrong)]) == set(wrong.tolist())  # flagged first, by quality
    assert list(issues.suggested[wrong]) == list(true[wrong])
    # self_confidence: the probability of the given label.
    np.testing.assert_allclose(issues.quality, probs[np.arange(len(given)), given])
    assert issues.noise == pytest.approx(len(wrong) / len(given), abs=0.03)
    table = noise_table(LABELS, issues.joint, len(given))
    assert len(table) == 6 and sum(row["images"] for row in table) == pytest.approx(len(wrong), abs=8)


def test_clean_labels_are_not_flagged():
    true, _, probs, _ = noisy_labels(flipped=0)
    issues = find_issues(true, probs, [str(i) for i in range(len(true))])
    assert not issues.is_issue.any()
    assert all(row["share_of_given"] < 0.01 for row in noise_table(LABELS, issues.joint, len(true)))


def fold_rows(digests, given, probs, folds):
    """Each fold's validation prediction rows (as eval_predictions.csv holds them): image i in fold i % folds."""
    rows = [[] for _ in range(folds)]
    for i, (digest, label) in enumerate(zip(digests, given)):
        rows[i % folds].append({"sha256": digest, "true_label": label,
                                **{f"prob_{name}": str(p) for name, p in zip(LABELS, probs[i])}})
    return rows


def test_the_assembly_matches_each_image_to_its_one_fold_by_digest():
    rng = np.random.default_rng(1)
    digests = [f"{i:064x}" for i in range(12)]
    given = [LABELS[i % 3] for i in range(12)]
    probs = rng.dirichlet(np.ones(3), 12) * 2  # unnormalised: the assembly normalises
    rows = fold_rows(digests, given, probs, 3)
    rows[1].reverse()  # the order within a fold's file does not matter
    order = np.random.default_rng(2).permutation(12)  # nor the training images' order
    got, fold = assemble_out_of_fold(rows, ["fold-0", "fold-1", "fold-2"], [digests[i] for i in order],
                                     [given[i] for i in order], LABELS)
    np.testing.assert_allclose(got, probs[order] / probs[order].sum(1, keepdims=True))
    assert list(fold) == [i % 3 for i in order]


def test_the_assembly_refuses_a_missing_a_repeated_and_a_foreign_image():
    digests = [f"{i:064x}" for i in range(9)]
    given = [LABELS[i % 3] for i in range(9)]
    probs = np.full((9, 3), 1 / 3)
    names = ["fold-0", "fold-1", "fold-2"]

    missing = fold_rows(digests, given, probs, 3)
    del missing[2][0]
    with pytest.raises(OutOfFoldError, match="1 of 9 training images have no out-of-fold probability and 0") as err:
        assemble_out_of_fold(missing, names, digests, given, LABELS)
    assert err.value.fold is None

    repeated = fold_rows(digests, given, probs, 3)
    repeated[2].append(dict(repeated[0][0]))
    with pytest.raises(OutOfFoldError, match=f"sha256:{digests[0]} is in the validation folds of both fold-0 "
                                             "and fold-2") as err:
        assemble_out_of_fold(repeated, names, digests, given, LABELS)
    assert err.value.fold == 2

    foreign = fold_rows(digests, given, probs, 3)
    foreign[1].append({**foreign[1][0], "sha256": "f" * 64})
    with pytest.raises(OutOfFoldError, match="0 of 9 training images .* and 1 predicted images are not training"):
        assemble_out_of_fold(foreign, names, digests, given, LABELS)

    relabelled = fold_rows(digests, given, probs, 3)  # the same image, given another label since
    relabelled[0][0]["true_label"] = LABELS[1]
    with pytest.raises(OutOfFoldError, match="1 of 9 training images have no out-of-fold probability and 1"):
        assemble_out_of_fold(relabelled, names, digests, given, LABELS)

    undigested = fold_rows(digests, given, probs, 3)
    undigested[1][0]["sha256"] = ""
    with pytest.raises(OutOfFoldError, match="lacks the images' content digests") as err:
        assemble_out_of_fold(undigested, names, digests, given, LABELS)
    assert err.value.fold == 1


def test_a_warning_when_a_fold_is_within_near_chance_of_the_largest_class(capsys):
    label_ids = np.array([0, 0, 0, 1])  # always answering class 0: 0.75
    warn_if_uninformed({"fold-0": 0.75, "fold-1": 0.875}, label_ids, near_chance=0.125)
    err = capsys.readouterr().err
    assert "fold-0 (0.750)" in err and "fold-1" not in err and "within 12 points" in err
    warn_if_uninformed({"fold-0": 0.875, "fold-1": None}, label_ids, near_chance=0.125)  # at the line: learned
    assert capsys.readouterr().err == ""


def test_a_warning_when_the_folds_err_as_often_as_the_labels_are_noisy(capsys):
    warn_if_errors_match_noise({"fold-0": 0.80, "fold-1": 0.84}, noise=0.15)  # 18% error against 15% noise
    assert "may be right labels the models get wrong" in capsys.readouterr().err
    warn_if_errors_match_noise({"fold-0": 0.875}, noise=0.25)  # the threshold: error at half the noise
    assert "validation error (12.5%)" in capsys.readouterr().err
    warn_if_errors_match_noise({"fold-0": 0.876, "fold-1": None}, noise=0.25)
    warn_if_errors_match_noise({"fold-0": None}, noise=0.0)
    assert capsys.readouterr().err == ""
