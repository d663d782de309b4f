"""data.extra_test: test sets from other sources, evaluated like test at the end of training and by
evaluate.py, checked for copies of training images, and tabled in the card with their intervals."""

import json
import shutil

import pytest
from conftest import tiny_config
from PIL import Image, ImageOps

import evaluate
import train
from facemask.__main__ import main
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.data.prepare import prepare_data


def shifted_folder(root, seed=5):
    """Drawn faces of another seed, upside down: the mask sits where the eyes were in training."""
    assert main(["synth", str(root), "--num-images", "120", "--image-size", "48", "--seed", str(seed)]) == 0
    for path in root.rglob("*.*"):
        with Image.open(path) as image:
            flipped = ImageOps.flip(image.convert("RGB"))
        flipped.save(path)
    return root


@pytest.mark.slow  # a run with two extra test sets: ~25 s
def test_an_extra_test_set_from_a_shifted_source_is_evaluated_and_tabled(tmp_path):
    shifted = shifted_folder(tmp_path / "upside-down-faces")
    config = tiny_config(tmp_path, data={"synthetic": True, "synthetic_num_images": 600, "synthetic_image_size": 40,
                                         "test_split": 0.2},
                         training={"max_steps": 200, "learning_rate": 3e-3, "per_device_train_batch_size": 32})
    train.main([str(config), f"data.extra_test.flipped={shifted}"])
    out = tmp_path / "out"
    test = json.loads((out / "test_results.json").read_text())
    flipped = json.loads((out / "flipped_results.json").read_text())
    assert flipped["flipped_accuracy"] < test["test_accuracy"] - 0.05, (flipped, test)
    # The same evaluation as test: every per-split file, the intervals naming the folder, not its path.
    for suffix in ("predictions.csv", "confusion_matrix.json", "slices.json", "calibration.json", "errors.json",
                   "intervals.json", "classification_report.json"):
        assert (out / f"flipped_{suffix}").is_file(), suffix
    intervals = json.loads((out / "flipped_intervals.json").read_text())
    assert intervals["source"] == "upside-down-faces" and intervals["images"] == 120
    card = (out / "README.md").read_text()
    section = card.split("## Generalization (95% intervals)")[1].split("\n## ")[0]
    [row] = [line for line in section.splitlines() if line.startswith("| flipped |")]
    assert "| upside-down-faces | 120 |" in row and str(tmp_path) not in card
    delta = 100 * (flipped["flipped_accuracy"] - test["test_accuracy"])
    assert row.rstrip(" |").endswith(f"{delta:+.1f} points")
    assert "## Flipped Metrics" in card  # its log_metrics block, as the Trainer printed it

    # evaluate.py evaluates the saved model on the same set again, from the run's own config.
    metrics = evaluate.main([str(out), "--config", str(out / "experiment.yaml"), "--split", "flipped",
                             "--output-dir", str(tmp_path / "again")])
    assert metrics["flipped_accuracy"] == pytest.approx(flipped["flipped_accuracy"])
    assert json.loads((tmp_path / "again" / "flipped_intervals.json").read_text())["source"] == "upside-down-faces"


def test_a_copy_shared_by_train_and_an_extra_set_is_reported_and_handled_by_on_leak(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "train"), "--num-images", "40", "--image-size", "48", "--seed", "1"]) == 0
    other = tmp_path / "other-source"
    assert main(["synth", str(other), "--num-images", "20", "--image-size", "48", "--seed", "9"]) == 0
    copied = sorted((tmp_path / "train" / "with_mask").iterdir())[0]
    shutil.copy(copied, other / "with_mask" / f"copy-{copied.name}")
    overrides = [f"data.train_dir={tmp_path / 'train'}", f"data.extra_test.other={other}",
                 "data.shortcut_threshold=1.01", "data.max_class_ratio=10"]
    cfg = load_config(tiny_config(tmp_path), overrides)
    cfg.data.synthetic = False
    prepared = prepare_data(cfg.data, cfg.seed, 32)
    # on_leak=drop: the training copy goes, the extra set stays whole.
    assert prepared.removed["train_leaked_images_removed"] == 1
    assert len(prepared.data.splits["other"]) == 21
    [removed] = prepared.report["leaks_removed"]["train"]
    assert removed["file"].endswith(copied.name) and removed["copy_of"]["split"] == "other"
    # on_leak=error: the audit refuses the data, naming the pair.
    code = main(["audit", str(tmp_path / "config.yaml"), *overrides, "data.synthetic=false", "data.on_leak=error"])
    assert code == 1
    err = capsys.readouterr().err
    assert "the same image in more than one split" in err and copied.name in err


@pytest.mark.parametrize("override, message", [
    ("data.extra_test.test=/x", "none of all, eval, test, train, validation"),
    ("data.extra_test.Test=/x", "whatever its case"),
    ("data.extra_test.all=/x", "none of all"),
    ("data.extra_test.two-words=/x", "letters, digits or _"),
])
def test_extra_test_names_are_checked(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(tiny_config(tmp_path), [override])


def test_copies_shared_by_test_and_an_extra_set_are_a_warning_not_a_leak(tmp_path):
    for name, seed, n in (("train", 1, 40), ("test", 2, 20), ("other@source", 9, 20)):
        assert main(["synth", str(tmp_path / name), "--num-images", str(n), "--image-size", "48",
                     "--seed", str(seed)]) == 0
    copied = sorted((tmp_path / "test" / "with_mask").iterdir())[0]
    shutil.copy(copied, tmp_path / "other@source" / "with_mask" / f"copy-{copied.name}")
    # A folder whose path holds an @ is taken whole, not read as SOURCE@SPLIT.
    cfg = load_config(tiny_config(tmp_path), [f"data.train_dir={tmp_path / 'train'}", "data.synthetic=false",
                                              f"data.test_dir={tmp_path / 'test'}", "data.on_leak=error",
                                              f"data.extra_test.other={tmp_path / 'other@source'}",
                                              "data.shortcut_threshold=1.01", "data.max_class_ratio=10"])
    prepared = prepare_data(cfg.data, cfg.seed, 32)
    report = prepared.report
    assert report["leaks"] == [] and not any("leak" in e for e in report["errors"])
    [pair] = report["copies_between_test_sets"]
    assert {pair["a"]["split"], pair["b"]["split"]} == {"test", "other"}
    assert any("shared by test sets" in w for w in report["warnings"])
    assert len(prepared.data.splits["test"]) == 20 and len(prepared.data.splits["other"]) == 21


def test_a_dataset_folders_validation_split_is_found_under_its_aliases(tmp_path):
    from facemask.data.sources import load_split_source

    assert main(["synth", str(tmp_path / "data" / "val"), "--num-images", "8", "--image-size", "32"]) == 0
    ds, name = load_split_source(str(tmp_path / "data"), "validation")
    assert len(ds) == 8 and name == "data/val"
