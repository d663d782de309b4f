import json

import pytest
import torch
from conftest import REPO, tiny_config

import train
from facemask.config.loading import load_config
from facemask.data.synthetic import sample

RESULT_KEYS = {"accuracy", "f1", "precision", "recall", "roc_auc", "loss", "runtime", "samples_per_second"}


@pytest.mark.parametrize("model_type", ["vit", "beit"])
def test_two_step_training_writes_a_loadable_model_and_results(tiny_run, model_type):
    out, config, results, printed = tiny_run(model_type)
    for block in ("train", "eval", "test"):
        assert f"***** {block} metrics *****" in printed

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "experiment.yaml",
                 "train_results.json", "eval_results.json", "test_results.json", "all_results.json",
                 "trainer_state.json", "eval_confusion_matrix.json", "test_confusion_matrix.json"):
        assert (out / name).is_file(), name
    for split, prefix in (("eval", "eval"), ("test", "test")):
        saved = json.loads((out / f"{split}_results.json").read_text())
        assert {f"{prefix}_{k}" for k in RESULT_KEYS} <= set(saved)
        assert saved == pytest.approx({k: v for k, v in results[prefix].items()})
        assert 0.0 <= saved[f"{prefix}_accuracy"] <= 1.0
    train_saved = json.loads((out / "train_results.json").read_text())
    assert train_saved["train_loss"] > 0 and train_saved["epoch"] > 0
    all_results = json.loads((out / "all_results.json").read_text())
    assert {"train_loss", "eval_accuracy", "test_accuracy"} <= set(all_results)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2

    # 60 images: 20% test (6 + 6), then 15% of all from the 48 left, stratified: 4.5 per class, so 4 + 4.
    matrix = json.loads((out / "eval_confusion_matrix.json").read_text())
    assert matrix["labels"] == ["with_mask", "without_mask"]
    assert sum(map(sum, matrix["matrix"])) == 8
    correct = matrix["matrix"][0][0] + matrix["matrix"][1][1]
    assert correct / 8 == pytest.approx(results["eval"]["eval_accuracy"])

    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["id2label"] == {"0": "with_mask", "1": "without_mask"}
    assert saved_config["label2id"] == {"with_mask": 0, "without_mask": 1}
    assert load_config(out / "experiment.yaml") == load_config(config)


def test_saved_model_classifies_through_pipeline(tiny_run):
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(tiny_run("vit").out), device="cpu")
    image, _ = sample(seed=99, index=0, size=80)
    predictions = classifier(image)
    assert {p["label"] for p in predictions} == {"with_mask", "without_mask"}
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)


def test_image_folder_run_needs_only_train_dir(tmp_path, synth_folder):
    results = train.main([str(REPO / "configs" / "quickstart.yaml"), f"data.train_dir={synth_folder}",
                          f"training.output_dir={tmp_path / 'out'}", "training.max_steps=2"])
    assert "eval_accuracy" in results["eval"] and "test_accuracy" in results["test"]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def _trained_three_steps(tmp_path):
    """A FaceMaskTrainer after 3 steps with a checkpoint per step, and checkpoint-1's weights."""
    from transformers import AutoModelForImageClassification

    from facemask.data.prepare import prepare_data
    from facemask.pipeline.inputs import prepare_inputs
    from facemask.pipeline.processor import load_image_processor
    from facemask.training.arguments import training_arguments
    from facemask.training.modeling import build_model
    from facemask.training.trainer import build_trainer

    cfg = load_config(tiny_config(tmp_path, "vit", training={"save_strategy": "steps", "save_steps": 1,
                                                              "max_steps": 3, "learning_rate": 0.05}))
    data = prepare_data(cfg.data, cfg.seed).data
    processor = load_image_processor(cfg.model)
    model = build_model(cfg.model, data.id2label, data.label2id)
    trainer = build_trainer(model, training_arguments(cfg), data, processor, cfg, prepare_inputs(data, processor, cfg))
    trainer.train()
    first = str(tmp_path / "out" / "checkpoint-1")
    trainer.state.best_model_checkpoint = first
    return trainer, AutoModelForImageClassification.from_pretrained(first).state_dict()


def test_best_checkpoint_is_really_reloaded(tmp_path):
    # transformers 5 reloads the best checkpoint with a non-strict load_state_dict that misses every
    # ViT encoder weight; FaceMaskTrainer must restore the checkpoint's exact weights.
    trainer, expected = _trained_three_steps(tmp_path)
    current = trainer.model.state_dict()
    assert not all(torch.equal(v, current[k]) for k, v in expected.items())  # training moved the weights
    trainer._load_best_model()
    current = trainer.model.state_dict()
    assert all(torch.equal(v, current[k]) for k, v in expected.items())


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="huggingface/transformers#43701: the stock Trainer reloads checkpoints non-strictly and "
                          "misses every ViT encoder weight. When this passes, drop FaceMaskTrainer's "
                          "_load_best_model/_load_from_checkpoint overrides.")
def test_stock_trainer_reload_still_misses_the_weights(tmp_path):
    from transformers import Trainer

    trainer, expected = _trained_three_steps(tmp_path)
    Trainer._load_best_model(trainer)  # the stock method, not the override
    current = trainer.model.state_dict()
    assert all(torch.equal(v, current[k]) for k, v in expected.items())


@pytest.mark.slow  # a train.py process with a fresh font cache: ~14 s on 2 busy cores
def test_the_console_says_what_the_run_does_and_the_rest_goes_to_train_log(tmp_path):
    import os
    import subprocess
    import sys

    config = tiny_config(tmp_path, training={"disable_tqdm": False, "save_strategy": "steps", "save_steps": 1})
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, "train.py", str(config)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    # What the run is about to do, the data summary, the cache build's and the training's progress (lines
    # here: the output is a pipe, tests/test_console.py), the metric blocks, where the outputs are.
    for shown in ("training a random-init vit model on synthetic", "validation: 8 images",
                  "caching train images: 100% (", "training: 100% (", "***** test metrics *****",
                  f"outputs in {tmp_path / 'out'}"):
        assert shown in console, shown
    # Not: the libraries' other progress bars and chatter (dataset saving, shard writing, fonts).
    for noise in ("Saving the dataset", "Writing model shards", "fontManager", "transformers.trainer"):
        assert noise not in console, noise
    log = (tmp_path / "out" / "train.log").read_text()
    assert "facemask: validation: 8 images" in log and "transformers.trainer: ***** Running training *****" in log
    assert "matplotlib.font_manager" in log  # a fresh font cache: said in the log, not on the console


def test_total_flos_counts_each_image_as_its_patches_and_grows_with_images_seen(tiny_run, tmp_path):
    from transformers import ViTForImageClassification

    two_steps = tiny_run("vit").out  # tiny_config's run: 2 steps of 8 images
    assert json.loads((two_steps / "trainer_state.json").read_text())["global_step"] == 2
    train.main([str(tiny_config(tmp_path, training={"max_steps": 4, "per_device_train_batch_size": 8}))])
    flos = {16: json.loads((two_steps / "train_results.json").read_text())["total_flos"],
            32: json.loads((tmp_path / "out" / "train_results.json").read_text())["total_flos"]}
    model = ViTForImageClassification.from_pretrained(two_steps)
    tokens = (32 // 8) ** 2 + 1  # the tiny ViT: 32 px in patches of 8, and the class token
    # 6 x non-embedding parameters x tokens per image (forward and backward), for each image trained on.
    assert flos[16] == pytest.approx(16 * 6 * tokens * model.num_parameters(exclude_embeddings=True), rel=1e-6)
    assert flos[32] == pytest.approx(2 * flos[16], rel=1e-6)
