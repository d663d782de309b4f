import contextlib
import io
import json
import re
import shutil

import pytest
import yaml
from conftest import REPO, tiny_config
from huggingface_hub import ModelCard

import train
from facemask.__main__ import main as cli
from facemask.publish.card import write_card
from facemask.publish.classifier_card import METRICS, render_card
from facemask.run_folder import read_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ViT run with validation and test splits, and what it printed."""
    tmp = tmp_path_factory.mktemp("run")
    config = tiny_config(tmp, "vit", training={"eval_strategy": "steps", "eval_steps": 1, "logging_steps": 1})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train.main([str(config), "card.tags=[synthetic]", "data.robustness=true", "data.error_maps=ablation"])
    return tmp / "out", printed.getvalue()


def printed_blocks(text):
    """The `***** split metrics *****` blocks as Trainer.log_metrics printed them."""
    blocks = re.findall(r"^(\*\*\*\*\* \w+ metrics \*\*\*\*\*\n(?:  .*\n)+)", text, flags=re.M)
    return [b.rstrip("\n") for b in blocks]


def test_card_front_matter_parses_and_matches_results(trained):
    out, _ = trained
    text = (out / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "image-classification"
    assert meta["license"] == "apache-2.0"
    assert meta["tags"] == ["image-classification", "vision", "vit", "face-mask", "synthetic"]
    assert "base_model" not in meta  # random init: there is no base model

    card = ModelCard.load(out / "README.md")
    found = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    for prefix, split in (("eval", "validation"), ("test", "test")):
        results = json.loads((out / f"{prefix}_results.json").read_text())
        for metric in METRICS:
            assert found[(split, metric)] == results[f"{prefix}_{metric}"]
    assert len(found) == 2 * len(METRICS)


def test_card_blocks_are_what_log_metrics_printed(trained):
    out, printed = trained
    text = (out / "README.md").read_text()
    blocks = printed_blocks(printed)
    assert [b.splitlines()[0] for b in blocks] == ["***** train metrics *****", "***** eval metrics *****",
                                                   "***** test metrics *****"]
    for block in blocks:
        indented = "\n".join("    " + line for line in block.splitlines())
        assert indented in text
    for heading in ("## Training Metrics", "## Evaluation Metrics", "## Test Metrics"):
        assert heading in text


def test_card_sections(trained):
    out, _ = trained
    text = (out / "README.md").read_text()
    galleries = [p.name for p in [*out.glob("*_errors.png"), *out.glob("*_robustness.png"), *out.glob("*_occlusion.png")]]
    assert text.count("![") == 3 + len(galleries) and (out / "training_curves.png").is_file()
    assert all(f"]({name})" in text for name in galleries)
    for heading in ("## Shortcuts", "## Robustness", "## Slices", "## Errors", "## Calibration and operating points"):
        assert heading in text
    # Sections with nothing to show say so, never a bare heading.
    assert "Attribute values that (almost) only one class has" in text and "- none found" in text
    assert "- none run on the test split: no shortcut was flagged" in text
    assert "expected calibration error" in text and "| best F1 |" in text
    assert (out / "eval_confusion_matrix.png").is_file() and (out / "test_confusion_matrix.png").is_file()
    assert "| true \\ predicted | with_mask | without_mask |" in text
    assert "[CLS]" in text and "Dosovitskiy" in text  # ViT description and citation
    assert "| learning_rate | 0.001 |" in text and "| max_steps | 2 |" in text
    assert "python train.py " in text and "card.tags=[synthetic]" in text
    assert "- Transformers " in text
    # 60 images, 30 per class: 12 test (6 + 6), then 4 + 4 validation (4.5 per class), stratified.
    assert "| test | 12 | 6 | 6 |" in text
    assert "| validation | 8 | 4 | 4 |" in text and "| train | 40 | 20 | 20 |" in text
    assert "not recorded" not in text


def test_regenerating_gives_the_same_bytes(trained, tmp_path):
    out, _ = trained
    original = (out / "README.md").read_bytes()
    assert cli(["card", str(out), "--output", str(tmp_path / "README.md")]) == 0
    assert (tmp_path / "README.md").read_bytes() == original
    for png in ("training_curves.png", "eval_confusion_matrix.png"):
        assert (tmp_path / png).read_bytes() == (out / png).read_bytes()
    assert cli(["card", str(out)]) == 0
    assert (out / "README.md").read_bytes() == original


def test_a_later_evaluation_adds_its_split(trained, tmp_path):
    out, _ = trained
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors"))
    holdout = {"holdout_accuracy": 0.75, "holdout_f1": 0.7, "holdout_precision": 0.8, "holdout_recall": 0.6,
               "holdout_roc_auc": 0.81, "holdout_loss": 0.5, "holdout_runtime": 1.25,
               "holdout_samples_per_second": 80.0}
    (run / "holdout_results.json").write_text(json.dumps(holdout))
    write_card(run)
    text = (run / "README.md").read_text()
    assert "## Holdout Metrics" in text and "      holdout_accuracy           =       0.75" in text
    card = ModelCard.load(run / "README.md")
    assert {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}[
        ("holdout", "roc_auc")] == 0.81


def test_missing_files_render_as_not_recorded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": 224, "patch_size": 16,
                                                      "hidden_size": 768, "num_hidden_layers": 12,
                                                      "num_attention_heads": 12,
                                                      "id2label": {"0": "mask", "1": "no_mask"}}))
    path = write_card(tmp_path)
    text = path.read_text()
    card = ModelCard.load(path)
    assert card.data.library_name == "transformers"
    for section in ("## Training Metrics", "## Evaluation Metrics", "## Training curves", "## Framework versions"):
        body = text.split(section)[1].split("\n## ")[0]
        assert "not recorded" in body, section
    assert "Hyperparameters: not recorded" in text and "Split sizes and class balance: not recorded" in text


def test_a_folder_that_is_not_a_run_gets_no_card(tmp_path, capsys):
    """`card` on a folder that holds no model once wrote "classifies a face image as ." into it."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("nothing here is a run\n")
    assert cli(["card", str(notes)]) == 2
    assert f"{notes} is not a run folder: it holds no config.json" in capsys.readouterr().err
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
    # A repeat's summary folder has a card of its own, which `card` must not replace.
    summary = tmp_path / "seeds"
    summary.mkdir()
    (summary / "repeat_results.json").write_text("{}")
    (summary / "README.md").write_text("# 3 seeds\n")
    assert cli(["card", str(summary)]) == 2
    assert "repeat's summary" in capsys.readouterr().err and (summary / "README.md").read_text() == "# 3 seeds\n"


def test_checkpoint_runs_name_their_base_model_and_beit_gets_its_own_description(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "beit", "image_size": 224, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "use_relative_position_bias": True, "use_mean_pooling": True,
        "layer_scale_init_value": 0.1, "id2label": {"0": "with_mask", "1": "without_mask"}}))
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": "microsoft/beit-base-patch16-224-pt22k-ft22k"},
        "data": {"dataset_name": "someone/face-masks"}, "hub": {"model_id": "me/beit-facemask"}}))
    text = render_card(read_run(tmp_path), figures={})
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == "microsoft/beit-base-patch16-224-pt22k-ft22k"
    assert meta["datasets"] == ["someone/face-masks"] and "beit" in meta["tags"]
    assert "relative position bias" in text and "mean pooling" in text and "masked image modelling" in text
    assert "Bao" in text and 'pipeline("image-classification", model="me/beit-facemask")' in text


def test_tokens_never_reach_the_card_or_the_experiment_file(tmp_path):
    token = "hf_" + "Ab1" * 12
    config = tiny_config(tmp_path, "vit", training={"hub_token": token})
    train.main([str(config), f"training.hub_token={token}"])
    out = tmp_path / "out"
    for name in ("README.md", "experiment.yaml", "run_info.json", "trainer_state.json"):
        assert token not in (out / name).read_text(), name


@pytest.mark.parametrize("name", ["vit-base-facemask", "beit-base-facemask"])
def test_reference_cards_are_current(name, tmp_path):
    folder = REPO / "model_cards" / name
    regenerated = write_card(folder / "run", output=tmp_path / "README.md")
    assert regenerated.read_bytes() == (folder / "README.md").read_bytes(), (
        f"model_cards/{name}/README.md is stale: python -m facemask card model_cards/{name}/run "
        f"--output model_cards/{name}/README.md")


def _key_values(text: str) -> dict:
    """`key = value` lines of metric blocks, spacing ignored, per block in order of appearance."""
    blocks, current = [], None
    for line in text.splitlines():
        match = re.fullmatch(r"\s+(\w+)\s+=\s+(\S+)", line)
        if match:
            if current is None:
                current = {}
                blocks.append(current)
            current[match.group(1)] = match.group(2)
        else:
            current = None
    return blocks


@pytest.mark.parametrize("name", ["vit", "beit"])
def test_reference_cards_show_the_published_blocks_exactly(name):
    published = (REPO / "model_cards" / "published-metric-blocks.md").read_text()
    shared = REPO.parent / "shared" / "reference" / "published-metric-blocks.md"
    if shared.is_file():
        assert shared.read_text() == published, "model_cards/published-metric-blocks.md differs from shared/"
    section = published.split(f"## {name.upper()}\n", 1)[1].split("\n## ", 1)[0]
    expected = _key_values(section)
    card = (REPO / "model_cards" / f"{name}-base-facemask" / "README.md").read_text()
    training = card.split("## Training Metrics", 1)[1].split("\n## ", 1)[0]
    evaluation = card.split("## Evaluation Metrics", 1)[1].split("\n## ", 1)[0]
    assert [_key_values(training)[0], _key_values(evaluation)[0]] == expected


def _model_index(text: str) -> dict:
    """{split: (dataset name, dataset type)} of the card's model-index, one per split."""
    meta = yaml.safe_load(text.split("---")[1])
    found = {}
    for result in meta["model-index"][0]["results"]:
        dataset = result["dataset"]
        assert found.setdefault(dataset["split"], (dataset["name"], dataset["type"])) == (dataset["name"],
                                                                                          dataset["type"])
    return found


def test_each_split_of_the_model_index_names_its_own_source(tmp_path):
    for name, seed in (("studio-faces", 1), ("street-test", 2), ("other-camera", 9)):
        assert cli(["synth", str(tmp_path / name), "--num-images", "40", "--image-size", "48",
                    "--seed", str(seed)]) == 0
    config = tiny_config(tmp_path / "cfg", data={"train_dir": str(tmp_path / "studio-faces"),
                                                 "test_dir": str(tmp_path / "street-test"),
                                                 "validation_split": 0.2, "shortcut_threshold": 1.01,
                                                 "max_class_ratio": 10})
    train.main([str(config), f"data.extra_test.camera={tmp_path / 'other-camera'}"])
    out = tmp_path / "cfg" / "out"
    text = (out / "README.md").read_text()
    assert _model_index(text) == {"validation": ("studio-faces", "imagefolder"),
                                  "test": ("street-test", "imagefolder"),
                                  "camera": ("other-camera", "imagefolder")}
    assert str(tmp_path) not in text
    # Where the run recorded them: run_info.json, by name.
    info = json.loads((out / "run_info.json").read_text())
    assert info["data"]["split_sources"] == {"test": {"type": "imagefolder", "name": "street-test"},
                                             "camera": {"type": "imagefolder", "name": "other-camera"}}
    # The text says so too: where the test sets came from, beside the training data.
    training_data = text.split("## Training data")[1].split("\n## ")[0]
    assert "- Dataset: studio-faces" in training_data
    assert "- Evaluated on other sources: test: street-test; camera: other-camera" in training_data
    section = text.split("## Generalization (95% intervals)")[1].split("\n## ")[0]
    assert any(line.startswith("| test | street-test |") for line in section.splitlines())
    # Regenerated elsewhere (the folders gone), the card stays the same.
    for name in ("studio-faces", "street-test", "other-camera"):
        shutil.rmtree(tmp_path / name)
    write_card(out, output=tmp_path / "again" / "README.md")
    assert (tmp_path / "again" / "README.md").read_text() == text


def test_a_local_checkpoint_is_described_never_named_as_the_base_model(tmp_path, trained):
    base = tmp_path / "saved-run"
    shutil.copytree(trained[0], base, ignore=shutil.ignore_patterns("checkpoint-*"))
    config = tiny_config(tmp_path / "cfg", model={"name_or_path": str(base)})
    train.main([str(config)])
    out = tmp_path / "cfg" / "out"
    texts = [(out / "README.md").read_text()]
    shutil.rmtree(base)  # a card regenerated where the checkpoint is not: still no Hub id
    for text in texts + [render_card(read_run(out), figures={})]:
        meta = yaml.safe_load(text.split("---")[1])
        assert "base_model" not in meta
        assert "fine-tuned from a local checkpoint, `saved-run`" in text and str(tmp_path) not in text
        assert "ImageNet-21k" not in text  # the ViT text about the Hub checkpoint is not claimed
    assert json.loads((out / "run_info.json").read_text())["base_model"] == {"local_folder": "saved-run"}


@pytest.mark.parametrize("name_or_path, expected", [
    ("google/vit-base-patch16-224-in21k", "google/vit-base-patch16-224-in21k"),
    ("outputs/quickstart", None),  # a folder that exists here (made below)
    ("./quickstart", None), ("/srv/runs/quickstart", None), ("~/runs/quickstart", None),
])
def test_an_unrecorded_base_model_is_a_hub_id_only_when_it_reads_as_one(tmp_path, monkeypatch, name_or_path,
                                                                        expected):
    """Runs from before run_info.json recorded the base model: the config's string alone decides."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "quickstart").mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": 32, "patch_size": 8,
                                                 "hidden_size": 32, "num_hidden_layers": 2,
                                                 "num_attention_heads": 2, "id2label": {"0": "a", "1": "b"}}))
    (run / "experiment.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": name_or_path}}))
    text = render_card(read_run(run), figures={})
    assert yaml.safe_load(text.split("---")[1]).get("base_model") == expected
    if expected is None:
        assert "fine-tuned from a local checkpoint, `quickstart`" in text
