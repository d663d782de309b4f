"""python -m facemask label-issues: K fold models (repeat's machinery), an out-of-fold probability for
every training image from the one model that did not train on it, label issues found and ranked by
cleanlab, and the outputs named by the issue; bad input refused before any training."""

import csv
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODELS, tiny_config
from PIL import Image
from test_messy import CLASSES, draw, near_copy

import train
from facemask.__main__ import main
from facemask.config.loading import load_config
from facemask.data.prepare import prepare_data
from facemask.evaluation.eval_data import sample_names
from facemask.evaluation.predict import prediction_rows
from facemask.runtime.files import write_rows
from facemask.run_folder import CARD, PREDICTIONS, RESULTS, write_json

COLUMNS = ["file", "given_label", "suggested_label", "label_quality", "is_issue", "sha256", "suggested_probability",
           "fold"]


def read_csv(path):
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def fold_splits(config, folds):
    """Each fold's validation split as the fold run carves it: (dataset, inspections, labels)."""
    cfg = load_config(str(config))
    for k in range(folds):
        prepared = prepare_data(dataclasses.replace(cfg.data, cv_folds=folds, cv_fold=k), cfg.seed, 32)
        yield prepared.data.splits["validation"], prepared.inspections["validation"], prepared.data.labels


def save_tiny_model(folder):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    fields = {k: v for k, v in TINY_MODELS["vit"].items() if k != "model_type"}
    ViTForImageClassification(ViTConfig(num_labels=2, id2label=dict(enumerate(CLASSES)),
                                        label2id={c: k for k, c in enumerate(CLASSES)}, **fields)).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)


def finished_folds(config, out, folds, suspect):
    """Fold folders as finished runs leave them, without training: each holds its validation
    predictions (the given label likely, except for the images `suspect` picks by digest, whose
    other class is likely) and accuracy. Returns the suspects' digests."""
    chosen = set()
    for k, (ds, inspections, labels) in enumerate(fold_splits(config, folds)):
        folder = out / f"fold-{k}"
        folder.mkdir(parents=True)
        given = np.asarray(ds["label"])
        digests = [found.sha256 for found in inspections]
        flip = np.array([suspect(d) for d in digests])
        chosen |= {d for d, f in zip(digests, flip) if f}
        likely = np.where(flip, 1 - given, given)
        rng = np.random.default_rng(k)
        # A wrong label the model contradicts with confidence (a clear case), the rest less sure.
        confidence = np.where(flip, rng.uniform(0.96, 0.99, len(given)), rng.uniform(0.75, 0.95, len(given)))
        probs = np.where(np.arange(2) == likely[:, None], confidence[:, None], 1 - confidence[:, None])
        write_rows(prediction_rows(sample_names(ds, "image"), given, probs, labels, digests),
                   PREDICTIONS.path(folder, "eval"))
        write_json(RESULTS.path(folder, "eval"), {"eval_accuracy": 0.9 + k / 100})
        CARD.path(folder).write_text("# a fold\n")
        save_tiny_model(folder)  # the figure maps each suspect with the fold model that did not train on it
    return chosen


@pytest.mark.parametrize("source", ["synthetic", "hub-style folder"])
def test_issues_from_the_folds_predictions_ranked_listed_and_drawn(source, synth_folder, tmp_path, capsys):
    if source == "synthetic":
        data = {"synthetic": True, "synthetic_num_images": 80, "synthetic_image_size": 32, "test_split": 0.2}
    else:  # data.dataset_name: a local folder with a train/ folder of classes, read by datasets.load_dataset
        shutil.copytree(synth_folder, tmp_path / "hubstyle" / "train")
        data = {"dataset_name": str(tmp_path / "hubstyle"), "test_split": 0.2}
    config = tiny_config(tmp_path, data=data)
    out = tmp_path / "out"
    suspects = finished_folds(config, out, 3, lambda digest: digest[0] in "01")  # ~1 in 8, by content
    assert 2 <= len(suspects) <= 12
    assert main(["label-issues", str(config), "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier") == 3  # nothing trained

    rows = read_csv(out / "label_issues.csv")
    assert list(rows[0]) == COLUMNS
    pool = [(d.sha256, labels[y]) for ds, inspections, labels in fold_splits(config, 3)
            for d, y in zip(inspections, ds["label"])]
    if source == "synthetic":  # images held in the dataset: named by content
        assert all(row["file"].startswith("sha256:") for row in rows)
        named = [(row["file"][len("sha256:"):], row["given_label"]) for row in rows]
        assert sorted(named) == sorted(pool)  # every training image once, with its given label
    else:  # files: relative to the data folder, never absolute
        assert all(row["file"].split("/")[:2] == ["train", row["given_label"]] for row in rows)
        assert len(rows) == len(pool) == len({row["file"] for row in rows})
        # Each row's digest is its file's bytes' (the review page and corrections.csv match by it).
        folder = Path(json.loads((out / "label_issues.json").read_text())["data_folder"])
        assert folder == (tmp_path / "hubstyle").resolve()
        assert all(hashlib.sha256((folder / row["file"]).read_bytes()).hexdigest() == row["sha256"] for row in rows)
    assert sorted((row["sha256"], row["given_label"]) for row in rows) == sorted(pool)
    # The probability the page shows is the out-of-fold one of the suggestion: above one half for two classes.
    assert all(0.5 <= float(row["suggested_probability"]) <= 1 for row in rows)
    assert {row["fold"] for row in rows} == {"0", "1", "2"}
    flagged = [row for row in rows if row["is_issue"] == "True"]
    # The images whose out-of-fold probability favours the other class are the issues, ranked first.
    assert len(flagged) == len(suspects) and rows[:len(flagged)] == flagged
    assert all(row["suggested_label"] != row["given_label"] for row in flagged)
    assert all(row["suggested_label"] == row["given_label"] for row in rows[len(flagged):])
    quality = [float(row["label_quality"]) for row in rows]
    assert quality[:len(flagged)] == sorted(quality[:len(flagged)]) and max(quality[:len(flagged)]) < 0.2
    assert min(quality[len(flagged):]) >= 0.75

    lines = (out / "exclude.txt").read_text().splitlines()
    listed = [line for line in lines if not line.startswith("#")]
    assert len(listed) == len(suspects) and lines[0].startswith("# ")
    digests = {line.split("sha256:")[1] for line in listed}
    assert digests == suspects
    if source == "synthetic":
        assert all(line.startswith("sha256:") for line in listed)
    else:  # the list is local: each file by its full path, beside its digest
        assert [line.split("\t")[0] for line in listed] == [str(tmp_path / "hubstyle" / row["file"]) for row in flagged]

    report = json.loads((out / "label_issues.json").read_text())
    assert report["folds"] == 3 and report["images"] == len(rows) and report["issues"] == len(suspects)
    assert report["fold_accuracy"] == {"fold-0": 0.9, "fold-1": 0.91, "fold-2": 0.92}
    assert sum(report["images_per_fold"]) == len(rows) and min(report["images_per_fold"]) > 0
    assert "find_label_issues" in report["method"]["is_issue"] and report["method"]["library"].startswith("cleanlab")
    assert {(n["given_label"], n["true_label"]) for n in report["noise"]} == {CLASSES, CLASSES[::-1]}
    assert 0 < sum(n["images"] for n in report["noise"]) < len(rows) / 2
    assert str(tmp_path) not in (out / "label_issues.csv").read_text()
    # Each suspect beside its map: two panels an image, four images a row (2.4 in at 100 dpi each), and
    # the maps' colour key (0.6 in).
    assert Image.open(out / "label_issues.png").size[0] == 2 * 4 * 240 + 60
    assert (out / "repeat_results.csv").is_file()  # the folds' own metrics, as repeat writes them
    assert f"{len(suspects)} of {len(rows)} training images flagged" in printed
    assert "data.exclude=" in printed and "exclude.txt" in printed

    # A fold's predictions that miss a training image: an error, not a silent gap.
    path = PREDICTIONS.path(out / "fold-1", "eval")
    kept = read_csv(path)[1:]
    write_rows(kept, path)
    assert main(["label-issues", str(config), "--folds", "3"]) == 2
    assert "1 of" in capsys.readouterr().err


@pytest.fixture
def small_folder(tmp_path):
    def make(counts):
        root = tmp_path / "small"
        for label, count in zip(CLASSES, counts):
            if count:
                draw(root / label, label, count, seed=5)
        return root
    return make


@pytest.mark.parametrize("counts, argv, message", [
    ((12, 12), ["--folds", "1"], "--folds must be at least 2"),
    ((12, 12), ["data.audit=false"], "needs data.audit=true"),
    ((12, 12), ["data.max_eval_samples=4"], "data.max_eval_samples"),
    ((12, 12), ["data.cv_folds=3"], "give --folds K instead"),
    ((12, 12), ["training.load_best_model_at_end=true"], "each fold model trains a fixed schedule"),
    ((12, 0), [], "found 1 classes"),
    ((12, 3), ["--folds", "2"], "class 'without_mask' has 3 training images: --folds 2 needs at least 2 per fold (4)"),
    ((12, 7), ["--folds", "5"], "class 'without_mask' has 7 training images: --folds 5 needs at least 2 per fold "
                                "(10); use --folds 3 or fewer"),
    ((12, 12), ["data.exclude=LIST"], "not a text list"),
])
def test_bad_input_exits_2_before_any_training(counts, argv, message, small_folder, tmp_path, capsys):
    config = tiny_config(tmp_path, data={"train_dir": str(small_folder(counts))})
    image = next((tmp_path / "small").rglob("*.jpg"))  # an image given as the exclude list
    argv = [a.replace("LIST", str(image)) for a in argv]
    assert main(["label-issues", str(config), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_figure_draws_each_map_beside_its_image_and_the_image_alone_without_one(tmp_path):
    from PIL import Image

    from facemask.evaluation.explain import Explanation
    from facemask.evaluation.figures import label_issues_png

    images = [Image.new("RGB", (32, 32), (120, 120, 120)) for _ in range(2)]
    suspects = [{"file": f"with_mask/{k}.jpg", "given_label": "with_mask", "suggested_label": "without_mask",
                 "label_quality": 0.05} for k in range(2)]
    grid = np.zeros((4, 4))
    grid[0, 0] = 1.0
    found = Explanation(np.array([0.2, 0.8]), 1, grid, "ablation", np.asarray(images[0]))
    flat = Explanation(np.array([0.2, 0.8]), 1, np.zeros((4, 4)), "ablation", np.asarray(images[0]))
    plain, mapped, keyed = tmp_path / "plain.png", tmp_path / "mapped.png", tmp_path / "keyed.png"
    assert label_issues_png(images, suspects, plain)
    assert label_issues_png(images, suspects, mapped, maps=[found, None])
    assert label_issues_png(images, suspects, keyed, maps=[flat, None])  # the same layout and colour key
    a, b, c = (np.asarray(Image.open(p).convert("RGB"), dtype=int) for p in (plain, mapped, keyed))
    assert not ((a[..., 0] - a[..., 2]) > 30).any()
    red = np.argwhere(((b[..., 0] - b[..., 2]) > 30) & ~((c[..., 0] - c[..., 2]) > 30))  # the one positive patch
    assert len(red)
    # ... in the first image's map panel (the second of 4), none beside the second image
    assert red[:, 1].min() > b.shape[1] / 5 and red[:, 1].max() < b.shape[1] / 2


def coloured(folder, label, count, seed, fmt="jpg", start=0):
    """Noisy flat images whose class is their colour (with_mask blue, without_mask red): the tiny
    model learns it in a few steps, so a label that contradicts the colour is a known wrong label."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(start, start + count):
        rng = np.random.default_rng([seed, CLASSES.index(label), k])
        base = rng.integers(60, 120, 3)
        base[2 if label == "with_mask" else 0] += 110
        path = folder / f"{label}_{seed}_{k}.{fmt}"
        Image.fromarray((rng.integers(0, 30, (48, 48, 3)) + base).astype(np.uint8)).save(
            path, **({"quality": 90} if fmt == "jpg" else {}))
        paths.append(path)
    return paths


def mislabelled_folder(root):
    """The messy folder's hazards (a copy of a test image in train, near copies in train, PNG only in
    one class) with 6 training files of each class put in the other class's folder."""
    train_dir, test_dir = root / "Train", root / "Test"
    coloured(train_dir / "with_mask", "with_mask", 45, seed=21)
    coloured(train_dir / "with_mask", "with_mask", 15, seed=23, fmt="png")
    coloured(train_dir / "without_mask", "without_mask", 60, seed=21)
    tests = {label: coloured(test_dir / label, label, 10, seed=22) for label in CLASSES}
    shutil.copy(tests["with_mask"][0], train_dir / "with_mask" / "leak_exact.jpg")
    for source in sorted((train_dir / "without_mask").glob("*_21_*.jpg"))[:2]:
        near_copy(source, source.with_name(f"{source.stem}_aug.jpg"))
    flipped = []
    for label, other in (CLASSES, CLASSES[::-1]):
        for path in coloured(root / "elsewhere", label, 6, seed=24):
            flipped.append(f"{other}/{shutil.move(path, train_dir / other / path.name).name}")
    return train_dir, test_dir, flipped


@pytest.mark.slow  # two fold runs, resumed, and a cleaned run: ~30 s
def test_label_issues_trains_resumable_folds_and_scores_each_image_by_the_fold_that_left_it_out(tmp_path, capsys):
    train_dir, test_dir, flipped = mislabelled_folder(tmp_path / "data")
    # A config that selects its model on validation (best checkpoint, early stopping): a fold model
    # must not, or its validation-fold probabilities would not be out of sample.
    selecting = {"eval_strategy": "steps", "eval_steps": 4, "save_strategy": "steps", "save_steps": 4,
                 "load_best_model_at_end": True, "metric_for_best_model": "accuracy"}
    config = tiny_config(tmp_path, data={"train_dir": str(train_dir), "test_dir": str(test_dir)},
                         training={"max_steps": 20, "learning_rate": 3e-3, "per_device_train_batch_size": 16,
                                   **selecting}, recipe={"early_stopping_patience": 1})
    out = tmp_path / "out"
    assert main(["label-issues", str(config), "data.shortcut_test=false", "--folds", "2"]) == 0
    first = capsys.readouterr().out
    for k in range(2):
        state = json.loads((out / f"fold-{k}" / "trainer_state.json").read_text())
        assert state["global_step"] == 20 and state["best_model_checkpoint"] is None
        assert not [entry for entry in state["log_history"] if "eval_loss" in entry and entry["step"] < 20]
    rows = read_csv(out / "label_issues.csv")
    assert list(rows[0]) == COLUMNS
    given = {row["file"]: row["given_label"] for row in rows}
    # Every training image once (the copy of a test image left out), the flipped ones with their wrong label.
    on_disk = {p.relative_to(train_dir).as_posix() for p in train_dir.rglob("*.*")} - {"with_mask/leak_exact.jpg"}
    assert set(given) == on_disk and len(rows) == len(on_disk)
    assert all(given[name] == name.split("/")[0] for name in flipped)
    # The wrong labels are found: flagged, and ranked above every right one.
    flagged = {row["file"] for row in rows if row["is_issue"] == "True"}
    assert set(flipped) <= flagged and len(flagged) <= len(flipped) + 2, (flagged, flipped)
    assert {row["file"] for row in rows[:len(flipped)]} == set(flipped)
    assert [line.split("\t")[0] for line in (out / "exclude.txt").read_text().splitlines()
            if not line.startswith("#")] == [str(train_dir / row["file"]) for row in rows[:len(flagged)]]
    # Each image's out-of-fold probability is the one of the fold that validated (did not train on) it.
    suggested = {row["file"]: row["suggested_label"] for row in rows}
    quality = {row["file"]: float(row["label_quality"]) for row in rows}
    for k in range(2):
        trained_on = {"/".join(Path(name).parts[-2:]) for name in sample_names(*_fold_train(config, k))}
        for row in read_csv(PREDICTIONS.path(out / f"fold-{k}", "eval")):
            name = "/".join(Path(row["file"]).parts[-2:])
            assert name not in trained_on
            assert quality[name] == pytest.approx(float(row[f"prob_{row['true_label']}"]), abs=2e-6)
            assert suggested[name] == row["predicted_label"] or abs(float(row["prob_with_mask"]) - 0.5) < 1e-5
    report = json.loads((out / "label_issues.json").read_text())
    fold_rows = read_csv(out / "repeat_results.csv")
    assert report["fold_accuracy"] == {r["run"]: pytest.approx(float(r["eval_accuracy"])) for r in fold_rows}
    assert "label-issues:" in first and "retrain without them (blind): python train.py" in first
    assert "python -m facemask review " in first
    # Resumed: the finished folds are not trained again, the outputs are the same.
    cards = [CARD.path(out / f"fold-{k}").stat().st_mtime_ns for k in range(2)]
    assert main(["label-issues", str(config), "--folds", "2", "data.shortcut_test=false"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    assert [CARD.path(out / f"fold-{k}").stat().st_mtime_ns for k in range(2)] == cards
    assert read_csv(out / "label_issues.csv") == rows
    # The list trains a run without the flagged images, the test split untouched.
    train.main([str(config), f"data.exclude={out / 'exclude.txt'}", "data.shortcut_test=false",
                f"training.output_dir={tmp_path / 'cleaned'}"])
    excluded = json.loads((tmp_path / "cleaned" / "run_info.json").read_text())["data"]["exclude"]
    assert excluded["list"] == "exclude.txt" and excluded["images_listed"] == len(flagged)
    assert sum(excluded["excluded"].values()) == len(flagged) and excluded["not_found"] == 0


def _fold_train(config, k):
    cfg = load_config(str(config), ["data.cv_folds=2", f"data.cv_fold={k}"])
    return prepare_data(cfg.data, cfg.seed, 32).data.splits["train"], "image"


def test_a_training_folder_of_symbolic_links_keeps_its_images_names(tmp_path):
    from facemask.training.label_issues import _relative

    photos = tmp_path / "photos" / "with_mask"
    photos.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(photos / "a.png")
    folder = tmp_path / "train"
    (folder / "without_mask").mkdir(parents=True)
    # The image linked in (not copied) under the other class: its name is the link's, not the target's.
    (folder / "without_mask" / "b.png").symlink_to(photos / "a.png")
    assert _relative(str(folder / "without_mask" / "b.png"), folder) == "without_mask/b.png"
    # A folder reached through a linked parent still matches its images' resolved paths.
    (tmp_path / "via").symlink_to(tmp_path / "photos")
    assert _relative(str(photos / "a.png"), tmp_path / "via") == "with_mask/a.png"
    assert _relative(str(photos / "a.png"), tmp_path / "photos") == "with_mask/a.png"
    assert _relative(str(tmp_path / "elsewhere.png"), folder) is None


def test_images_data_corrections_added_are_listed_by_their_absolute_path(tmp_path):
    """A second round: the pool images a review labelled joined training through data.corrections;
    label-issues lists them by their own file (the review page can show them), not as bare digests."""
    from facemask.data.corrections import Correction, write_corrections
    from facemask.training.label_issues import training_images

    new = draw(tmp_path / "pool", "with_mask", 2, seed=41, size=32)
    path = write_corrections(tmp_path / "corrections.csv", [
        Correction(0, str(p), hashlib.sha256(p.read_bytes()).hexdigest(), None, "with_mask") for p in new])
    data = {"synthetic": True, "synthetic_num_images": 40, "synthetic_image_size": 32, "test_split": 0.25,
            "corrections": str(path)}
    images = training_images(load_config(str(tiny_config(tmp_path, data=data))), 2)
    listed = [f for f in images.files if not f.startswith("sha256:")]
    assert sorted(listed) == sorted(str(p.resolve()) for p in new)
    assert all(images.has_file[images.files.index(f)] for f in listed)
