"""Folders with the hazards of real scraped face-mask sets: copies across the published train/test
folders, near-copy groups inside train, a format only one class has, a class of upsampled small
images. Training must run on them with only train_dir/test_dir set, and say what it did."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, tiny_config
from PIL import Image

import train
from facemask.config.schema import DataConfig
from facemask.data.prepare import prepare_data
from facemask.data.synthetic import sample

_spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "evaluate.py")
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)

CLASSES = ("with_mask", "without_mask")


def draw(folder: Path, label: str, count: int, seed: int, fmt: str = "jpg", size: int = 64, start: int = 0,
         upsample_from: int = 0) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(start, start + count):
        image, _ = sample(seed, CLASSES.index(label) + 2 * k, size)
        if upsample_from:
            image = image.resize((upsample_from, upsample_from), Image.Resampling.BILINEAR).resize(
                (size, size), Image.Resampling.BICUBIC)
        path = folder / f"{label}_{seed}_{k}.{fmt}"
        image.save(path, **({"quality": 90} if fmt == "jpg" else {}))
        paths.append(path)
    return paths


def near_copy(source: Path, target: Path, side: int = 56, quality: int = 70) -> Path:
    """A re-encoded, resized copy: what scraped sets hold many of."""
    Image.open(source).convert("RGB").resize((side, side), Image.Resampling.BILINEAR).save(target, quality=quality)
    return target


@pytest.fixture(scope="module")
def messy_real(tmp_path_factory):
    """(a) copies of test images in train, (b) near-copy groups in train, (c) PNG only in with_mask."""
    root = tmp_path_factory.mktemp("messy_real")
    train_dir, test_dir = root / "Train", root / "Test"
    draw(train_dir / "with_mask", "with_mask", 40, seed=11)
    draw(train_dir / "with_mask", "with_mask", 25, seed=13, fmt="png")  # (c)
    draw(train_dir / "without_mask", "without_mask", 60, seed=11)
    tests = {label: draw(test_dir / label, label, 15, seed=12) for label in CLASSES}
    leaked = []  # (a): 3 exact and 2 near copies of test images inside train
    for k, source in enumerate(tests["with_mask"][:3]):
        leaked.append(shutil.copy(source, train_dir / "with_mask" / f"leak_exact_{k}.jpg"))
    for k, source in enumerate(tests["without_mask"][:2]):
        leaked.append(near_copy(source, train_dir / "without_mask" / f"leak_near_{k}.jpg"))
    groups = []  # (b): 6 photos, each with two augmented near-copies beside it
    for label in CLASSES:
        for source in sorted((train_dir / label).glob(f"{label}_11_*.jpg"))[:3]:
            copies = [near_copy(source, source.with_name(f"{source.stem}_aug{j}.jpg"), side, quality)
                      for j, (side, quality) in enumerate([(56, 70), (60, 80)])]
            groups.append({str(source), *map(str, copies)})
    return {"root": root, "train": train_dir, "test": test_dir, "leaked": sorted(str(p) for p in leaked),
            "groups": groups}


def files(ds):
    return [item["path"] for item in ds["image"]]


def test_copies_are_dropped_from_train_and_groups_are_never_split(messy_real):
    cfg = DataConfig(train_dir=str(messy_real["train"]), test_dir=str(messy_real["test"]), validation_split=0.2)
    prepared = prepare_data(cfg, seed=0, image_side=32)
    report, splits = prepared.report, prepared.data.splits
    removed = sorted(row["file"] for row in report["leaks_removed"]["train"])
    assert removed == messy_real["leaked"]
    assert prepared.removed["train_leaked_images_removed"] == 5
    assert all(row["copy_of"]["split"] == "test" for row in report["leaks_removed"]["train"])
    assert not report["leaks"] and not report["errors"]
    assert len(splits["test"]) == 30  # the given test split stays whole
    where = {path: name for name in ("train", "validation") for path in files(splits[name])}
    assert not set(messy_real["leaked"]) & set(where)
    for group in messy_real["groups"]:
        assert len({where[path] for path in group}) == 1, group
    # Each copy is found beside its source (copies of each other may be further apart): 6 groups.
    assert report["carved"]["duplicate_groups"] == 6 and report["duplicate_pairs_within_splits"] >= 12
    counts = report["splits"]["validation"]["class_counts"]
    assert 0.35 < counts["with_mask"] / sum(counts.values()) < 0.65  # stratified
    assert 0.15 < report["carved"]["achieved"]["validation"]["fraction"] < 0.25
    # Deterministic by seed, and another seed carves another validation split.
    again = prepare_data(cfg, seed=0, image_side=32).data.splits
    assert files(again["validation"]) == files(splits["validation"])
    assert files(prepare_data(cfg, seed=1, image_side=32).data.splits["validation"]) != files(splits["validation"])


def test_partial_format_shortcut_is_flagged(messy_real):
    cfg = DataConfig(train_dir=str(messy_real["train"]), test_dir=str(messy_real["test"]))
    report = prepare_data(cfg, seed=0, image_side=32).report
    partial = {(s["attribute"], s["value"]): s for s in report["partial_shortcuts"]}
    png = partial[("file format", "PNG")]
    assert png["images"] == 25 and png["class"] == "with_mask" and png["class_share"] == 1.0
    assert png["message"].startswith("file format PNG: 25 images, all with_mask (")
    # The one-attribute classifier over the whole set misses it: most with_mask images are JPEGs.
    assert "file format" not in {s["attribute"] for s in report["shortcuts"]}
    assert any(w.startswith("partial shortcut: file format PNG") for w in report["warnings"])


def test_training_on_the_messy_folder_runs_and_reports_the_removal(messy_real, tmp_path):
    config = tiny_config(tmp_path, "vit", data={"train_dir": str(messy_real["train"]),
                                                "test_dir": str(messy_real["test"])},
                         training={"max_steps": 4})
    results = train.main([str(config)])
    out = tmp_path / "out"
    assert results["train"]["train_leaked_images_removed"] == 5
    assert json.loads((out / "train_results.json").read_text())["train_leaked_images_removed"] == 5
    card = (out / "README.md").read_text()
    assert "5 training images removed: copies of test images" in card
    assert "file format PNG: 25 images, all with_mask" in card
    shortcut = json.loads((out / "test_shortcut_test.json").read_text())
    assert "file format" in shortcut["flagged"]
    test = next(t for t in shortcut["tests"] if "file format" in t["attributes"])
    assert test["neutralised_by"].startswith("every image re-encoded as an RGB JPEG")
    assert test["before"]["accuracy"] == pytest.approx(results["test"]["test_accuracy"], abs=1e-4)
    assert test["verdict"] in card
    for name in ("test_slices.json", "test_calibration.json", "test_calibration.png", "test_errors.json",
                 "eval_slices.json", "operating_points.json"):
        assert (out / name).is_file(), name
    slices = json.loads((out / "test_slices.json").read_text())
    assert slices["overall"]["images"] == 30 and "sharpness" in slices["attributes"]
    # Switched off, the test leaves no file, and the card does not claim nothing was flagged.
    train.main([str(config), "data.shortcut_test=false", "--overwrite"])
    assert not (out / "test_shortcut_test.json").exists()
    card = (out / "README.md").read_text()
    assert "no shortcut was flagged" not in card and "file format PNG: 25 images, all with_mask" in card


@pytest.fixture(scope="module")
def upsampled(tmp_path_factory):
    """(d) without_mask made of small images upsampled to the common size; and a clean twin."""
    made = {}
    for name, small in (("upsampled", 12), ("clean", 0)):
        root = tmp_path_factory.mktemp(name)
        for split, seed, count in (("train", 21, 150), ("test", 22, 40)):
            draw(root / split / "with_mask", "with_mask", count, seed)
            draw(root / split / "without_mask", "without_mask", count, seed, upsample_from=small)
        made[name] = root
    return made


def test_upsampled_class_is_flagged_by_sharpness(upsampled):
    cfg = DataConfig(train_dir=str(upsampled["upsampled"] / "train"), test_dir=str(upsampled["upsampled"] / "test"))
    report = prepare_data(cfg, seed=0, image_side=32).report
    flagged = {s["attribute"] for s in report["partial_shortcuts"]}
    assert "sharpness" in flagged and "image size" not in flagged  # every file is 64x64
    lowest = next(s for s in report["partial_shortcuts"] if s["attribute"] == "sharpness")
    assert lowest["class"] == "without_mask"
    assert "sharpness" in {s["attribute"] for s in report["shortcuts"]}
    clean = DataConfig(train_dir=str(upsampled["clean"] / "train"), test_dir=str(upsampled["clean"] / "test"))
    assert not prepare_data(clean, seed=0, image_side=32).report["partial_shortcuts"]


@pytest.mark.slow  # tens of seconds: the default suite stays under ~8 minutes
def test_shortcut_test_drops_more_for_the_model_that_learned_the_shortcut(upsampled, tmp_path):
    # Long enough for a 4-layer ViT at 32 px to learn something (~15 s a run on 2 cores).
    training = {"max_steps": -1, "num_train_epochs": 30, "per_device_train_batch_size": 16, "learning_rate": 3e-3,
                "warmup_steps": 0.1, "lr_scheduler_type": "cosine", "weight_decay": 0.05}
    wider = ["model.from_config.hidden_size=64", "model.from_config.num_hidden_layers=4",
             "model.from_config.num_attention_heads=4", "model.from_config.intermediate_size=128"]
    shifted = upsampled["upsampled"] / "test"
    drops = {}
    for name in ("upsampled", "clean"):
        data = {"train_dir": str(upsampled[name] / "train"), "test_dir": str(upsampled[name] / "test"),
                "validation_split": 0.0}
        train.main([str(tiny_config(tmp_path / name, "vit", data=data, training=training)), *wider])
        out = tmp_path / name / "eval"
        evaluate_script.main([str(tmp_path / name / "out"), "--data", str(shifted), "--output-dir", str(out),
                              "--shortcut-test", "sharpness"])
        result = json.loads((out / "test_shortcut_test.json").read_text())["tests"][0]
        assert result["attributes"] == ["sharpness"] and "downscaled to a" in result["neutralised_by"]
        drops[name] = result["accuracy_drop_points"]
    assert drops["upsampled"] > drops["clean"] + 3, drops
    # The run trained on (d) flagged sharpness and tested itself at the end of training, on the same
    # test images through the same code: the same drop.
    own = json.loads((tmp_path / "upsampled" / "out" / "test_shortcut_test.json").read_text())
    assert "sharpness" in own["flagged"]
    test = next(t for t in own["tests"] if "sharpness" in t["attributes"])
    assert test["accuracy_drop_points"] == pytest.approx(drops["upsampled"], abs=0.01)
    assert test["relies"] and "the model relies on" in test["verdict"]
    clean = json.loads((tmp_path / "clean" / "out" / "test_shortcut_test.json").read_text())
    assert clean == {"flagged": [], "tests": []}
