"""python -m facemask compare: two runs on the same images, McNemar's exact test and a paired
bootstrap interval of the accuracy difference."""

import json
from math import comb

import pytest
from conftest import tiny_config

import train
from facemask.__main__ import main
from facemask.runtime.files import write_rows


def fake_run(folder, outcomes, names=None):
    """A run folder holding only test_predictions.csv: image k is with_mask, right where outcomes[k]."""
    folder.mkdir(parents=True)
    names = names or [f"/data/test/img{k:03d}.jpg" for k in range(len(outcomes))]
    rows = [{"file": name, "true_label": "with_mask", "predicted_label": "with_mask" if right else "without_mask",
             "prob_with_mask": 0.9 if right else 0.1, "prob_without_mask": 0.1 if right else 0.9}
            for name, right in zip(names, outcomes)]
    write_rows(rows, folder / "test_predictions.csv")
    return folder


def test_mcnemar_exact_p_value_and_the_paired_interval(tmp_path, capsys):
    # 80 images both get right, 3 only A, 10 only B, 7 neither.
    a = [True] * 80 + [True] * 3 + [False] * 10 + [False] * 7
    b = [True] * 80 + [False] * 3 + [True] * 10 + [False] * 7
    run_a, run_b = fake_run(tmp_path / "a", a), fake_run(tmp_path / "b", b)
    assert main(["compare", str(run_a), str(run_b), "--output", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "cmp.json").read_text())
    # The exact two-sided binomial p-value of 3 against 10, by hand.
    expected = min(1.0, 2 * sum(comb(13, k) for k in range(0, 4)) / 2 ** 13)
    assert result["mcnemar"]["p_value"] == pytest.approx(expected, rel=1e-9)
    assert (result["mcnemar"]["a_right_b_wrong"], result["mcnemar"]["a_wrong_b_right"]) == (3, 10)
    assert result["run_a"]["accuracy"] == 0.83 and result["run_b"]["accuracy"] == 0.90
    diff = result["difference"]
    assert diff["b_minus_a"] == pytest.approx(0.07) and diff["low"] < 0.07 < diff["high"]
    assert diff["bootstrap"]["resamples"] >= 1000
    assert "McNemar" in out and f"{expected:.4g}" in out and "+0.0700" in out
    # No discordant images: p = 1.
    fake_run(tmp_path / "c", a)
    assert main(["compare", str(run_a), str(tmp_path / "c")]) == 0
    assert "| 1 |" in capsys.readouterr().out


def test_compare_refuses_runs_on_different_images(tmp_path, capsys):
    run_a = fake_run(tmp_path / "a", [True] * 10)
    run_b = fake_run(tmp_path / "b", [True] * 10, names=[f"/data/test/other{k}.jpg" for k in range(10)])
    assert main(["compare", str(run_a), str(run_b)]) == 2
    assert "different images (10 only in" in capsys.readouterr().err
    assert main(["compare", str(run_a), str(tmp_path / "missing")]) == 2
    assert "test_predictions.csv does not exist" in capsys.readouterr().err


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_compare_two_trained_runs(six_step_run, tmp_path, capsys):
    from scipy.stats import binomtest

    # Run a: 6 steps at tiny_config's learning rate, 1e-3; run b the same at 3e-3.
    train.main([str(tiny_config(tmp_path / "b", training={"max_steps": 6})), "training.learning_rate=3e-3"])
    a, b = six_step_run, tmp_path / "b" / "out"
    import yaml

    assert {k: yaml.safe_load((a / "experiment.yaml").read_text())["training"][k]
            for k in ("learning_rate", "max_steps")} == {"learning_rate": 1e-3, "max_steps": 6}
    assert main(["compare", str(a), str(b), "--split", "validation", "--output", str(tmp_path / "cmp.json")]) == 0
    assert "McNemar" in capsys.readouterr().out
    result = json.loads((tmp_path / "cmp.json").read_text())
    # The figures from the runs' own files: each run's accuracy is its training's, and the
    # discordant counts, p-value and difference follow from the two predictions files row by row.
    rows_a, rows_b = read_csv(a / "eval_predictions.csv"), read_csv(b / "eval_predictions.csv")
    right_a = [r["true_label"] == r["predicted_label"] for r in rows_a]
    right_b = [r["true_label"] == r["predicted_label"] for r in rows_b]
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    assert result["images"] == len(rows_a) == len(rows_b)
    assert (result["mcnemar"]["a_right_b_wrong"], result["mcnemar"]["a_wrong_b_right"]) == (only_a, only_b)
    expected_p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert result["mcnemar"]["p_value"] == pytest.approx(expected_p, rel=1e-9)
    for run, key in ((a, "run_a"), (b, "run_b")):
        own = json.loads((run / "eval_results.json").read_text())["eval_accuracy"]
        assert result[key]["accuracy"] == pytest.approx(own, abs=1e-6)
    diff = result["difference"]
    assert diff["b_minus_a"] == pytest.approx((only_b - only_a) / len(rows_a), abs=1e-6)
    assert diff["low"] <= diff["b_minus_a"] <= diff["high"]
    # Another seed draws and carves other images: compare says so instead of pairing them.
    train.main([str(tiny_config(tmp_path / "c", training={"seed": 1}))])
    assert main(["compare", str(a), str(tmp_path / "c" / "out")]) == 2
    assert "test predictions are on different images" in capsys.readouterr().err


@pytest.mark.slow  # three fold runs and a compare: ~25 s
def test_compare_pairs_the_folds_of_a_cross_validation_on_their_shared_test_split(tmp_path, capsys):
    # Folds carve other validation and training images but share the test split: their recorded
    # image digests pair them (their data fingerprints differ, which refused them before).
    data = {"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40, "test_split": 0.2,
            "cv_folds": 2}
    for fold in (0, 1):
        train.main([str(tiny_config(tmp_path / f"fold-{fold}", data={**data, "cv_fold": fold}))])
    a, b = tmp_path / "fold-0" / "out", tmp_path / "fold-1" / "out"
    assert main(["compare", str(a), str(b), "--output", str(tmp_path / "cmp.json")]) == 0
    result = json.loads((tmp_path / "cmp.json").read_text())
    assert result["images"] == 12
    assert main(["compare", str(a), str(b), "--split", "validation"]) == 2
    assert "validation predictions are on different images" in capsys.readouterr().err


def test_a_repeat_folder_is_answered_with_its_runs_not_an_evaluate_command(evaluated_run, tmp_path, capsys):
    """compare on a repeat's summary folder once suggested `python evaluate.py FOLDER ...`, which cannot
    evaluate a folder of runs."""
    import shutil

    repeat = tmp_path / "seeds"
    for name in ("seed-0", "seed-1"):
        shutil.copytree(evaluated_run, repeat / name, ignore=shutil.ignore_patterns("*.png"))
    (repeat / "repeat_results.json").write_text("{}")
    (repeat / "README.md").write_text("# 2 seeds\n")
    assert main(["compare", str(repeat), str(evaluated_run)]) == 2
    err = capsys.readouterr().err
    assert f"{repeat} is a repeat's summary folder" in err and "(seed-0, seed-1)" in err and "evaluate.py" not in err
    # The advice works: one of its runs against a run on the same images.
    assert main(["compare", str(repeat / "seed-0"), str(evaluated_run)]) == 0
