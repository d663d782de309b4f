import csv
import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, TINY_MODELS, tiny_config
from huggingface_hub import ModelCard

import train
from facemask.__main__ import main as cli
from facemask.config.schema import ConfigError, ModelConfig
from facemask.pipeline.processor import load_image_processor
from facemask.training.modeling import build_model

# The entry point is loaded by path: under pytest the name `evaluate` belongs to the library.
_spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "evaluate.py")
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)
evaluate_main = evaluate_script.main
KEYS = ("accuracy", "f1", "precision", "recall", "roc_auc", "loss", "runtime", "samples_per_second")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A short run of the quickstart config (its model, fewer images and steps)."""
    out = tmp_path_factory.mktemp("qs") / "run"
    train.main([str(REPO / "configs" / "quickstart.yaml"), f"training.output_dir={out}", "training.max_steps=30",
                "data.synthetic_num_images=300", "training.eval_strategy=no", "training.save_strategy=no",
                "training.load_best_model_at_end=false"])
    return out


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    assert cli(["synth", str(root), "--num-images", "41", "--image-size", "64", "--seed", "11"]) == 0
    return root


@pytest.fixture(scope="module")
def folder_evaluation(run_dir, eval_folder, tmp_path_factory):
    """evaluate.py RUN --data FOLDER --shortcut-test, once: its output folder, the metrics it returned
    and what it printed (the tests only read them)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("folder-evaluation") / "eval"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        metrics = evaluate_main([str(run_dir), "--data", str(eval_folder), "--output-dir", str(out), "--shortcut-test"])
    return out, metrics, printed.getvalue()


def model_probabilities(run_dir, files):
    """{label: probability} of each file, by transformers' own processor and model (no facemask code)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(run_dir).eval()
    processor = AutoImageProcessor.from_pretrained(run_dir)
    images = [Image.open(f).convert("RGB") for f in files]
    with torch.no_grad():
        probs = model(**processor(images=images, return_tensors="pt")).logits.softmax(-1)
    return [{model.config.id2label[i]: float(p[i]) for i in range(len(p))} for p in probs]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_results_match_the_predictions_csv(run_dir, eval_folder, folder_evaluation):
    out, metrics, printed = folder_evaluation
    assert "***** test metrics *****" in printed
    saved = json.loads((out / "test_results.json").read_text())
    assert {f"test_{k}" for k in KEYS} <= set(saved) and saved == pytest.approx(metrics)

    rows = read_csv(out / "test_predictions.csv")
    on_disk = sorted(str(p) for p in eval_folder.rglob("*") if p.is_file())
    assert sorted(r["file"] for r in rows) == on_disk and len(rows) == 41  # every image once, nothing else
    # Each row's probabilities are the model's for that very file (computed here with transformers
    # alone), so rows shuffled within a class, or probabilities of another image, fail.
    reference = model_probabilities(run_dir, [row["file"] for row in rows])
    for row, expected in zip(rows, reference):
        assert row["true_label"] == row["file"].split("/")[-2]  # the class folder the file is in
        probs = {k[len("prob_"):]: float(v) for k, v in row.items() if k.startswith("prob_")}
        assert set(probs) == {"with_mask", "without_mask"} and sum(probs.values()) == pytest.approx(1, abs=1e-5)
        assert probs == pytest.approx(expected, abs=1e-5)  # the CSV keeps 6 decimals
        assert row["predicted_label"] == max(probs, key=probs.get)
    assert len({r["prob_with_mask"] for r in rows}) > 10  # rows differ: the check above can fail
    by_hand = sum(r["true_label"] == r["predicted_label"] for r in rows) / len(rows)
    assert saved["test_accuracy"] == pytest.approx(by_hand)

    matrix = json.loads((out / "test_confusion_matrix.json").read_text())
    assert sum(map(sum, matrix["matrix"])) == 41
    report = json.loads((out / "test_classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(by_hand) and report["with_mask"]["support"] == 21
    for png in ("test_confusion_matrix.png", "test_roc_curve.png"):
        assert (out / png).stat().st_size > 1000


def test_cached_and_per_image_evaluation_agree(run_dir, eval_folder, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="facemask")
    cache = str(tmp_path / "cache")
    runs = {}
    for mode in ("cache", "per_image", "cache"):
        out = tmp_path / mode
        runs[mode] = evaluate_main([str(run_dir), "--data", str(eval_folder), "--output-dir", str(out),
                                    "--preprocess", mode, "--cache-dir", cache, "--overwrite"])
    assert caplog.text.count("built the preprocessing cache") == 1 and "reused the preprocessing cache" in caplog.text
    cached, per_image = read_csv(tmp_path / "cache" / "test_predictions.csv"), read_csv(
        tmp_path / "per_image" / "test_predictions.csv")
    assert cached == per_image  # same pixels in, same probabilities out (to the CSV's 6 decimals)
    assert runs["cache"]["test_loss"] == pytest.approx(runs["per_image"]["test_loss"], abs=1e-6)


def test_update_card_adds_the_split(run_dir, eval_folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    evaluate_main([str(run), "--data", str(eval_folder), "--split", "holdout", "--update-card"])
    text = (run / "README.md").read_text()
    assert "## Holdout Metrics" in text and "holdout_accuracy" in text
    results = json.loads((run / "holdout_results.json").read_text())
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in ModelCard.load(run / "README.md").data.eval_results}
    assert found[("holdout", "accuracy")] == results["holdout_accuracy"]
    assert ("test", "accuracy") in found  # the training run's own splits stay
    # The holdout's model-index result names the folder it was measured on, not the training data.
    datasets = {r.dataset_split: r.dataset_name for r in ModelCard.load(run / "README.md").data.eval_results}
    assert datasets["holdout"] == eval_folder.name and datasets["test"] != eval_folder.name


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_split_the_run_holds_is_refused_and_replaced_only_with_overwrite(evaluated_run, tmp_path):
    """The README's example once read `--split test --update-card`: another folder's figures replaced
    the run's held-out test split, in its files and its card, without a word."""
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    before = snapshot(run)
    other = ["--data", "synthetic", "--num-images", "20", "--image-size", "32", "--seed", "5", "--split", "test"]
    with pytest.raises(ConfigError, match=r"run .* already holds a 'test' split .*--split other.*--overwrite"):
        evaluate_main([str(run), *other, "--update-card"])
    with pytest.raises(ConfigError, match="already holds a 'test' split"):  # into the run folder, card or not
        evaluate_main([str(run), *other])
    with pytest.raises(ConfigError, match=f"the run folder {run} already holds"):  # copied there by --update-card
        evaluate_main([str(run), *other, "--output-dir", str(tmp_path / "elsewhere"), "--update-card"])
    assert snapshot(run) == before and not (tmp_path / "elsewhere").exists()

    # Asked for: the split is replaced whole, and the card's test figures are the new ones.
    stale = run / "test_shortcut_test.json"  # as train.py's test split had; this evaluation writes none
    stale.write_text("{}")
    metrics = evaluate_main([str(run), *other, "--update-card", "--overwrite"])
    assert len(read_csv(run / "test_predictions.csv")) == 20 and not stale.exists()
    assert json.loads((run / "test_results.json").read_text()) == pytest.approx(metrics)
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in ModelCard.load(run / "README.md").data.eval_results}
    assert found[("test", "accuracy")] == metrics["test_accuracy"]
    assert (run / "eval_results.json").read_bytes() == before["eval_results.json"]  # other splits untouched


def test_class_names_match_by_name_not_position(run_dir, eval_folder, folder_evaluation, tmp_path):
    # Sorted, "Without-Mask" comes before "with mask" here: matching by position would swap them.
    data = tmp_path / "renamed"
    shutil.copytree(eval_folder / "with_mask", data / "with mask")
    shutil.copytree(eval_folder / "without_mask", data / "Without-Mask")
    reference = folder_evaluation[0]
    evaluate_main([str(run_dir), "--data", str(data), "--output-dir", str(tmp_path / "out")])
    a = json.loads((reference / "test_results.json").read_text())
    b = json.loads((tmp_path / "out" / "test_results.json").read_text())
    assert a["test_accuracy"] == b["test_accuracy"] and a["test_roc_auc"] == b["test_roc_auc"]


def test_synthetic_data_and_a_dataset_folder_with_splits(run_dir, eval_folder, tmp_path):
    metrics = evaluate_main([str(run_dir), "--data", "synthetic", "--num-images", "20", "--image-size", "48",
                             "--output-dir", str(tmp_path / "s")])
    rows = read_csv(tmp_path / "s" / "test_predictions.csv")
    assert [r["file"] for r in rows] == [str(i) for i in range(20)] and 0 <= metrics["test_accuracy"] <= 1
    dataset = tmp_path / "dataset"
    shutil.copytree(eval_folder, dataset / "validation")
    evaluate_main([str(run_dir), "--data", str(dataset), "--split", "validation", "--output-dir", str(tmp_path / "d")])
    assert len(read_csv(tmp_path / "d" / "validation_predictions.csv")) == 41


def test_the_runs_own_config_scores_exactly_its_test_split(run_dir, tmp_path):
    # --config RUN/experiment.yaml carves the run's test split again: the same images in the same
    # order (the run's recorded digest), hence the same predictions, row by row, and the same metrics.
    out = tmp_path / "c"
    metrics = evaluate_main([str(run_dir), "--config", str(run_dir / "experiment.yaml"), "--output-dir", str(out)])
    own = json.loads((run_dir / "test_results.json").read_text())
    assert metrics["test_accuracy"] == own["test_accuracy"] and metrics["test_f1"] == own["test_f1"]
    assert metrics["test_loss"] == pytest.approx(own["test_loss"], abs=1e-5)
    info = json.loads((run_dir / "run_info.json").read_text())
    recorded = info["data"]["splits"]["test"]["content_sha256"]
    assert json.loads((out / "test_intervals.json").read_text())["content_sha256"] == recorded
    rows, trained = read_csv(out / "test_predictions.csv"), read_csv(run_dir / "test_predictions.csv")
    assert len(rows) == info["data"]["splits"]["test"]["num_images"] == len(trained)
    for row, theirs in zip(rows, trained):
        assert (row["file"], row["true_label"], row["predicted_label"]) == (
            theirs["file"], theirs["true_label"], theirs["predicted_label"])
        assert float(row["prob_with_mask"]) == pytest.approx(float(theirs["prob_with_mask"]), abs=2e-6)


def test_a_config_that_carves_other_images_is_refused(run_dir, tmp_path):
    import yaml

    # The run's own config with another seed (what every `repeat` run is): its test split holds
    # images the model trained on. So does a config of other data.
    config = yaml.safe_load((run_dir / "experiment.yaml").read_text())
    config["training"]["seed"] = config["training"].get("seed", 42) + 1
    other_seed = tmp_path / "other-seed.yaml"
    other_seed.write_text(yaml.safe_dump(config))
    for other in (other_seed, tiny_config(tmp_path, "vit")):
        with pytest.raises(ConfigError, match=rf"carves another test split.*--config {run_dir / 'experiment.yaml'}"):
            evaluate_main([str(run_dir), "--config", str(other), "--output-dir", str(tmp_path / "c")])
    assert not (tmp_path / "c" / "test_predictions.csv").exists()


def test_a_run_without_split_digests_is_held_to_its_seed(run_dir, tmp_path, caplog):
    import logging

    import yaml

    # A run folder from before the per-split digests: its seed and split sizes are all it records.
    old = tmp_path / "old-run"
    shutil.copytree(run_dir, old)
    info = json.loads((old / "run_info.json").read_text())
    for split in info["data"]["splits"].values():
        del split["content_sha256"]
    (old / "run_info.json").write_text(json.dumps(info))
    config = yaml.safe_load((old / "experiment.yaml").read_text())
    config["training"]["seed"] = info["seed"] + 1
    (tmp_path / "seed.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"its seed differ"):
        evaluate_main([str(old), "--config", str(tmp_path / "seed.yaml"), "--output-dir", str(tmp_path / "o")])
    caplog.set_level(logging.WARNING, logger="facemask")
    evaluate_main([str(old), "--config", str(old / "experiment.yaml"), "--output-dir", str(tmp_path / "o")])
    assert "records no digest of its splits" in caplog.text


def test_mismatched_class_names(run_dir, eval_folder, tmp_path):
    data = tmp_path / "pets"
    shutil.copytree(eval_folder / "with_mask", data / "cat")
    shutil.copytree(eval_folder / "without_mask", data / "dog")
    with pytest.raises(ConfigError, match=r"data has \['cat', 'dog'\], model has \['with_mask', 'without_mask'\]"):
        evaluate_main([str(run_dir), "--data", str(data), "--output-dir", str(tmp_path / "o")])


def test_empty_folder(run_dir, tmp_path):
    (tmp_path / "empty" / "with_mask").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no images"):
        evaluate_main([str(run_dir), "--data", str(tmp_path / "empty"), "--output-dir", str(tmp_path / "o")])


def test_missing_model(eval_folder, tmp_path):
    with pytest.raises(ConfigError, match="model not found: 'nobody/no-such-model'"):
        evaluate_main(["nobody/no-such-model", "--data", str(eval_folder), "--output-dir", str(tmp_path / "o")])
    (tmp_path / "notarun").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        evaluate_main([str(tmp_path / "notarun"), "--data", str(eval_folder)])


def test_model_with_another_number_of_labels(eval_folder, tmp_path):
    cfg = ModelConfig(from_config=TINY_MODELS["vit"])
    names = ["with_mask", "without_mask", "mask_under_chin"]
    build_model(cfg, dict(enumerate(names)), {n: i for i, n in enumerate(names)}).save_pretrained(tmp_path / "m3")
    load_image_processor(cfg).save_pretrained(tmp_path / "m3")
    with pytest.raises(ConfigError, match=r"the model has 3 labels .* but the data has 2 classes"):
        evaluate_main([str(tmp_path / "m3"), "--data", str(eval_folder), "--output-dir", str(tmp_path / "o")])


@pytest.mark.slow  # tens of seconds: the default suite stays under ~8 minutes
def test_each_sample_counted_once_with_two_processes(run_dir, eval_folder, tmp_path):
    single = tmp_path / "one"
    evaluate_main([str(run_dir), "--data", str(eval_folder), "--output-dir", str(single)])
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/multi-cpu.yaml",
         "evaluate.py", str(run_dir), "--data", str(eval_folder), "--output-dir", str(tmp_path / "two")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert "with 2 process(es)" in launched.stderr
    rows = read_csv(tmp_path / "two" / "test_predictions.csv")  # 41 images: uneven across 2 processes
    assert sorted(r["file"] for r in rows) == sorted(r["file"] for r in read_csv(single / "test_predictions.csv"))
    assert all(r["true_label"] == r["file"].split("/")[-2] for r in rows)
    two = json.loads((tmp_path / "two" / "test_results.json").read_text())
    one = json.loads((single / "test_results.json").read_text())
    assert two["test_accuracy"] == pytest.approx(one["test_accuracy"])


def test_predict_lists_and_skips_bad_files(run_dir, eval_folder, tmp_path, capsys):
    inputs = tmp_path / "photos"
    shutil.copytree(eval_folder / "with_mask", inputs / "a")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (inputs / "empty.png").write_bytes(b"")
    out = tmp_path / "pred.csv"
    code = cli(["predict", str(run_dir), str(inputs), str(eval_folder / "without_mask" / "*.png"),
                str(tmp_path / "missing.jpg"), "--output", str(out), "--batch-size", "4"])
    assert code == 1
    err = capsys.readouterr().err
    for name in ("notes.txt", "broken.jpg", "empty.png", "missing.jpg"):
        assert name in err
    assert "4 of" in err
    rows = read_csv(out)
    pngs = len(list((eval_folder / "without_mask").glob("*.png")))
    assert len(rows) == 21 + pngs
    for row in rows:
        probs = {k: float(v) for k, v in row.items() if k.startswith("prob_")}
        assert float(row["confidence"]) == pytest.approx(max(probs.values()))
        assert row["label"] == max(probs, key=probs.get)[len("prob_"):]

    assert cli(["predict", str(run_dir), str(eval_folder / "with_mask"), "--output", str(tmp_path / "p.json")]) == 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == 21


def test_predict_threshold_moves_the_decision(run_dir, eval_folder, tmp_path, capsys):
    out = tmp_path / "p.json"

    def labels(*extra):
        assert cli(["predict", str(run_dir), str(eval_folder), "--output", str(out), *extra]) == 0
        return json.loads(out.read_text())

    plain = labels()
    ordered = sorted(r["prob_with_mask"] for r in plain)
    middle = (ordered[len(ordered) // 2] + ordered[len(ordered) // 2 + 1]) / 2  # between two rows' probabilities
    assert all(r["label"] == "with_mask" for r in labels("--threshold", "0"))
    assert all(r["label"] == "without_mask" for r in labels("--threshold", "1.01"))
    for row in labels("--threshold", str(middle)):
        assert row["label"] == ("with_mask" if row["prob_with_mask"] >= middle else "without_mask")
        assert row["confidence"] == row[f"prob_{row['label']}"]
    table = json.loads((run_dir / "operating_points.json").read_text())
    best = next(r["threshold"] for r in table["rows"] if r["name"] == "best F1")
    for row in labels("--threshold", "best F1"):
        if abs(row["prob_with_mask"] - best) > 1e-5:  # rows' probabilities are rounded to 6 places
            assert row["label"] == ("with_mask" if row["prob_with_mask"] >= best else "without_mask")
    capsys.readouterr()
    assert cli(["predict", str(run_dir), str(eval_folder), "--threshold", "f1"]) == 2
    assert "'best F1'" in capsys.readouterr().err


def test_evaluation_writes_slices_calibration_and_errors(eval_folder, folder_evaluation):
    out = folder_evaluation[0]
    slices = json.loads((out / "test_slices.json").read_text())
    assert slices["overall"]["images"] == 41 and {"file format", "sharpness"} <= set(slices["attributes"])
    formats = {s["value"]: s["images"] for s in slices["attributes"]["file format"]}
    # The folder's own files decide the expected split per format (the synth CLI mixes JPEG and PNG).
    on_disk = {"JPEG": len(list(eval_folder.rglob("*.jpg"))), "PNG": len(list(eval_folder.rglob("*.png")))}
    assert on_disk["JPEG"] > 0 and on_disk["PNG"] > 0 and sum(on_disk.values()) == 41
    assert formats == on_disk
    errors = json.loads((out / "test_errors.json").read_text())
    rows = read_csv(out / "test_predictions.csv")
    wrong = [r for r in rows if r["true_label"] != r["predicted_label"]]
    assert errors["misclassified"] == len(wrong) and len(errors["worst"]) == min(16, len(wrong))
    assert (out / "test_errors.png").is_file() == bool(wrong)
    assert json.loads((out / "test_calibration.json").read_text())["images"] == 41
    # The synth command alternates formats independently of the class: nothing to flag, nothing run.
    assert json.loads((out / "test_shortcut_test.json").read_text()) == {"flagged": [], "tests": []}
