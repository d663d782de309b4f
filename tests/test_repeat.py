"""python -m facemask repeat: a config over seeds or cross-validation folds, its table of every run
with mean, spread (a standard error over seeds, the corrected one over folds) and range, resumed after an
interruption without running anything twice."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from facemask.__main__ import build_parser, main
from facemask.config.schema import ConfigError, DataConfig
from facemask.data.prepare import prepare_data
from facemask.data.splits import folds
from facemask.data.synthetic import write_image_folder
from facemask.run_folder import CARD, RESULTS, RUN_INFO, write_json
from facemask.training.repeat import runs_of, summarise


def parse(argv):
    commands = next(a for a in build_parser("repeat")._actions if hasattr(a, "choices") and a.choices)
    return commands.choices["repeat"].parse_intermixed_args(argv)


@pytest.mark.parametrize("argv", [
    ["c.yaml", "--seeds", "0", "1", "2", "data.x=1", "training.y=2"],
    ["c.yaml", "data.x=1", "--seeds", "0", "1", "2", "training.y=2"],
    ["c.yaml", "data.x=1", "training.y=2", "--seeds", "0", "1", "2"],
])
def test_the_first_key_value_ends_the_seeds_and_overrides_go_anywhere(argv):
    runs, overrides = runs_of(parse(argv))
    assert runs == [("seed-0", ["training.seed=0"]), ("seed-1", ["training.seed=1"]), ("seed-2", ["training.seed=2"])]
    assert sorted(overrides) == ["data.x=1", "training.y=2"]


def test_folds_and_bad_seeds():
    runs, _ = runs_of(parse(["c.yaml", "--folds", "3"]))
    assert [name for name, _ in runs] == ["fold-0", "fold-1", "fold-2"]
    assert runs[1][1] == ["data.cv_folds=3", "data.cv_fold=1"]
    with pytest.raises(ConfigError, match="seed twice"):
        runs_of(parse(["c.yaml", "--seeds", "1", "1"]))
    with pytest.raises(ConfigError, match="from 0"):
        runs_of(parse(["c.yaml", "--seeds", "-1", "2"]))


def test_summary_is_mean_standard_error_and_range():
    rows = [{"run": "seed-0", "test_accuracy": 0.90}, {"run": "seed-1", "test_accuracy": 0.94},
            {"run": "seed-2", "test_accuracy": 0.95}]
    s = summarise(rows)["test_accuracy"]
    assert s["mean"] == pytest.approx(0.93)
    assert s["se"] == pytest.approx(np.std([0.90, 0.94, 0.95], ddof=1) / math.sqrt(3))
    assert (s["min"], s["max"], s["n"]) == (0.90, 0.95, 3)


def test_a_metric_missing_from_some_runs_is_summarised_over_the_others_with_its_count():
    rows = [{"run": "seed-0", "test_accuracy": 0.90}, {"run": "seed-1", "test_accuracy": 0.94, "test_roc_auc": 0.97},
            {"run": "seed-2", "test_accuracy": 0.95, "test_roc_auc": 0.99}]
    s = summarise(rows)
    assert s["test_accuracy"]["n"] == 3
    assert s["test_roc_auc"]["n"] == 2 and s["test_roc_auc"]["mean"] == pytest.approx(0.98)
    assert s["test_roc_auc"]["se"] == pytest.approx(np.std([0.97, 0.99], ddof=1) / math.sqrt(2))


def test_folds_keep_duplicate_groups_together_and_classes_stratified():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    groups = np.arange(400)
    groups[:30] = 7  # one group of 30 copies
    fold = folds(labels, groups, 4, seed=0)
    assert len(set(fold[:30])) == 1
    for k in range(4):
        share = labels[fold == k].mean()
        assert abs(share - labels.mean()) < 0.08 and 80 <= (fold == k).sum() <= 125


def test_cross_validation_folds_cover_the_training_data_once_with_copies_on_one_side(tmp_path):
    root = write_image_folder(tmp_path / "d", 60, 40, seed=1, fmt="png")
    copied = []
    for original in sorted(root.glob("*/*.png"))[::6]:  # 10 images, each with two exact copies
        group = [original] + [original.with_name(f"copy{c}-{original.name}") for c in range(2)]
        for copy in group[1:]:
            shutil.copyfile(original, copy)
        copied.append({str(p) for p in group})
    every = {str(p) for p in root.glob("*/*.png")}
    carved = []
    for k in range(3):
        data = prepare_data(DataConfig(train_dir=str(root), test_split=0.2, cv_folds=3, cv_fold=k), seed=0).data
        carved.append({name: [item["path"] for item in ds[data.image_column]] for name, ds in data.splits.items()})
    test = set(carved[0]["test"])
    assert test and all(set(c["test"]) == test for c in carved)  # the same test split for every fold
    pool = sorted(every - test)
    for c in carved:  # each fold trains on the rest of the pool, no image twice
        assert sorted(c["train"] + c["validation"]) == pool
    # The validation folds together are the whole pool, each image in exactly one of them.
    assert sorted(image for c in carved for image in c["validation"]) == pool
    # A duplicate group is never split: in each fold it is all train, all validation or all test.
    for group in copied:
        for c in carved:
            assert any(group <= set(c[name]) for name in ("train", "validation", "test")), (group, c)


CORRECTED_SE = "se_nadeau_bengio_2003"  # the published name of the folds' corrected standard error


def finished_run(folder, metrics, splits):
    """A run folder as a finished training run leaves it, for the repeat to read: its card last."""
    folder.mkdir(parents=True)
    for prefix in ("train", "eval", "test"):
        write_json(RESULTS.path(folder, prefix), {k: v for k, v in metrics.items() if k.startswith(prefix)})
    write_json(RUN_INFO.path(folder), {"data": {"splits": {name: {"num_images": n} for name, n in splits.items()}}})
    CARD.path(folder).write_text("# a run\n")


def test_folds_report_their_spread_and_the_corrected_standard_error_never_a_plain_one(tmp_path, capsys):
    config = str(tiny_config(tmp_path))
    out = tmp_path / "out"
    evals, tests = [0.80, 0.90, 0.86], [0.88, 0.89, 0.91]
    for k in range(3):
        metrics = {"train_runtime": 10.0 + k, "eval_accuracy": evals[k], "test_accuracy": tests[k]}
        if k:  # the first fold lacks a metric the others have
            metrics["eval_roc_auc"] = 0.9 + k / 100
        finished_run(out / f"fold-{k}", metrics, {"train": 30 + k, "validation": 15 - k, "test": 12})
    assert main(["repeat", config, "--folds", "3"]) == 0
    printed = capsys.readouterr()
    written = json.loads((out / "repeat_results.json").read_text())
    summary = written["summary"]
    # No metric of the folds has a standard error that takes them as independent.
    assert all("se" not in s and s["sd"] == pytest.approx(np.std([r[k] for r in written["runs"] if k in r], ddof=1))
               for k, s in summary.items())
    # Worked by hand: the sample variance of 0.80, 0.90, 0.86 is 19/7500; the folds' validation over
    # training images, 15/30, 14/31 and 13/32, average 449/992; sqrt((1/3 + 449/992) x 19/7500) = 0.0446216.
    assert summary["eval_accuracy"][CORRECTED_SE] == pytest.approx(0.0446216, abs=1e-7)
    assert summary["eval_accuracy"][CORRECTED_SE] > np.std(evals, ddof=1) / math.sqrt(3)
    # Every fold scores the same test images: no standard error over folds for them.
    assert summary["test_accuracy"][CORRECTED_SE] is None and summary["train_runtime"][CORRECTED_SE] is None
    assert "Nadeau & Bengio" in written["spread"][CORRECTED_SE] and "not a standard error" in written["spread"]["sd"]
    # A metric missing from a run: over the runs that have it, with its count, and said so.
    assert summary["eval_roc_auc"]["n"] == 2 and summary["eval_roc_auc"]["mean"] == pytest.approx(0.915)
    # Over 2 runs: variance (0.01)^2 / 2 = 1/20000; sqrt((1/2 + 449/992) / 20000) = 0.00690153.
    assert summary["eval_roc_auc"][CORRECTED_SE] == pytest.approx(0.00690153, abs=1e-8)
    assert "eval_roc_auc is missing from fold-0" in printed.err
    card = (out / "README.md").read_text()
    assert "| SD over folds |" in card and "| SE, corrected (Nadeau & Bengio 2003) |" in card
    assert "mean ± SE" not in card and "(2 of 3 runs)" in card and "Machine Learning 52:239-281" in card
    with (out / "repeat_results.csv").open() as f:
        assert [r["eval_roc_auc"] for r in csv.DictReader(f)] == ["", "0.91", "0.92"]


def test_runs_near_chance_are_warned_about(tmp_path, capsys):
    """label-issues warns when its fold models are no better than the largest class; repeat said nothing."""
    config = str(tiny_config(tmp_path))
    out = tmp_path / "out"
    counts = {"validation": {"with_mask": 6, "without_mask": 4}, "test": {"with_mask": 10, "without_mask": 10}}
    for seed, (eval_accuracy, test_accuracy) in enumerate([(0.9, 0.52), (0.9, 0.95)]):
        folder = out / f"seed-{seed}"
        finished_run(folder, {"eval_accuracy": eval_accuracy, "test_accuracy": test_accuracy},
                     {"train": 40, "validation": 10, "test": 20})
        write_json(RUN_INFO.path(folder), {"data": {"splits": {name: {"num_images": sum(c.values()), "class_counts": c}
                                                               for name, c in counts.items()}}})
    assert main(["repeat", config, "--seeds", "0", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: accuracy within 5 points of always answering the largest class: seed-0 test 0.520 (largest " \
           "class 0.500)." in err
    assert "seed-1" not in err and "validation" not in err  # 0.9 against a largest class of 0.6 has learned


@pytest.mark.slow  # five tiny training runs, each its own process
def test_repeat_over_seeds_resumes_without_running_anything_twice_then_folds(tmp_path, capsys):
    config = str(tiny_config(tmp_path))
    out = tmp_path / "out"
    assert main(["repeat", config, "--seeds", "0", "1", "training.max_steps=1"]) == 0
    first = (out / "seed-0" / "README.md").stat().st_mtime_ns
    # Interrupted: seed-2's folder holds an unfinished run (no card yet).
    (out / "seed-2").mkdir()
    (out / "seed-2" / "experiment.yaml").write_text("training: {}\n")
    capsys.readouterr()
    assert main(["repeat", config, "training.max_steps=1", "--seeds", "0", "1", "2"]) == 0
    printed = capsys.readouterr().out
    assert "seed-0: finished earlier" in printed and "seed-1: finished earlier" in printed
    assert (out / "seed-0" / "README.md").stat().st_mtime_ns == first
    assert (out / "seed-2" / "README.md").is_file()
    with (out / "repeat_results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["seed-0", "seed-1", "seed-2"] and [r["seed"] for r in rows] == ["0", "1", "2"]
    summary = json.loads((out / "repeat_results.json").read_text())["summary"]
    accuracies = [float(r["test_accuracy"]) for r in rows]
    assert summary["test_accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["test_accuracy"]["se"] == pytest.approx(np.std(accuracies, ddof=1) / math.sqrt(3))
    assert "| mean ± SE |" in printed and "test_accuracy" in printed
    card = (out / "README.md").read_text()
    assert "3 seeds" in card and "python -m facemask repeat" in card and "| seed-2 |" in card

    cv = tmp_path / "cv"
    assert main(["repeat", config, "--folds", "2", f"training.output_dir={cv}", "training.max_steps=1"]) == 0
    sizes = [json.loads((cv / f"fold-{k}" / "run_info.json").read_text())["data"]["splits"] for k in range(2)]
    # Two folds: each one's validation is the other's training data.
    assert sizes[0]["validation"]["num_images"] == sizes[1]["train"]["num_images"] > 0
    assert sizes[1]["validation"]["num_images"] == sizes[0]["train"]["num_images"] > 0
    assert "2 folds" in (cv / "README.md").read_text()
    capsys.readouterr()
    assert main(["repeat", config, "--folds", "2", f"training.output_dir={cv}", "training.max_steps=1"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    # A folder that holds a training run is not a repeat's folder.
    assert main(["repeat", config, "--seeds", "0", f"training.output_dir={out / 'seed-0'}"]) == 2
    assert "holds a training run" in capsys.readouterr().err
