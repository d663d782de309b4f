"""python -m facemask compare: two runs on the same images, McNemar's exact test and a paired
bootstrap interval of the accuracy difference."""

import json
from math import comb

import pytest
from conftest import tiny_config

import train
from facemask.__main__ import main
from facemask.evaluation.predict import write_rows


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


def test_compare_two_trained_runs(tmp_path, capsys):
    for name, lr in (("a", 1e-3), ("b", 3e-3)):
        train.main([str(tiny_config(tmp_path / name)), f"training.learning_rate={lr}"])
    assert main(["compare", str(tmp_path / "a" / "out"), str(tmp_path / "b" / "out"), "--split", "validation"]) == 0
    assert "McNemar" in capsys.readouterr().out
    # Another seed draws other images: compare says so instead of pairing them.
    train.main([str(tiny_config(tmp_path / "c", training={"seed": 1}))])
    assert main(["compare", str(tmp_path / "a" / "out"), str(tmp_path / "c" / "out")]) == 2
    assert "same data fingerprint and seed" in capsys.readouterr().err
