"""Masked image modelling (`python -m facemask pretrain`), then fine-tuning from its run folder:
ViT and BEiT, resume, the one-line load report, the leak check of test images against the images
pretraining used, and the bad input that stops before any work. Tiny random-init models, images
drawn or written in the test."""

import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_MODELS, tiny_config
from PIL import Image

import evaluate
import pretrain
import train
from facemask.__main__ import main as facemask_main
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.run_folder import CARD, PRETRAINING, PRETRAINING_IMAGES, RECONSTRUCTIONS_FIGURE
from transformers import ViTForMaskedImageModeling

from facemask.training.masked_modeling import BeitForSimMIM, MaskGenerator, PretrainingTrainer
from facemask.training.modeling import build_model


def pretrain_config(tmp_path, model_type="vit", data=None, training=None, **pretrain_section):
    path = tiny_config(tmp_path, model_type, data=data, training={"max_steps": 4, **(training or {})})
    cfg = yaml.safe_load(path.read_text())
    cfg["pretrain"] = {"mask_patch_size": 16, "mask_ratio": 0.5, "reconstructions": 2, **pretrain_section}
    path.write_text(yaml.safe_dump(cfg))
    return path


def flat_folder(folder, count=40, seed=0):
    """Unlabelled photos as users have them: no class folders, JPEG and PNG, one exact copy, one
    file with damaged bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = (rng.random((36 + i % 5, 40, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"frame{i:03d}.{'jpg' if i % 3 else 'png'}")
    shutil.copy(folder / "frame001.jpg", folder / "copy-of-frame001.jpg")
    damaged = bytearray((folder / "frame002.jpg").read_bytes())
    damaged[200:600] = bytes(400)
    (folder / "broken.jpg").write_bytes(bytes(damaged[:300]) + b"\xff\xd9")
    return folder


@pytest.mark.parametrize("model_type", ["vit", "beit"])
def test_pretraining_makes_a_backbone_that_fine_tunes_with_a_fresh_head(tmp_path, model_type, caplog):
    images = flat_folder(tmp_path / "frames")
    config = pretrain_config(tmp_path / "pre", model_type, data={"train_dir": str(images), "on_bad_image": "skip",
                                                                 "validation_split": 0.2})
    record = pretrain.main([str(config)])
    folder = tmp_path / "pre" / "out"
    assert record["head"] == ("ViTForMaskedImageModeling" if model_type == "vit" else "BeitForSimMIM")
    assert json.loads(PRETRAINING.path(folder).read_text()) == record
    # Every usable image recorded by content: 40 drawn + 1 copy, minus the damaged one.
    digests = PRETRAINING_IMAGES.path(folder).read_text().split()
    assert sum(record["images"].values()) == 41 and len(digests) == 40  # the copy shares its digest
    assert record["data"] == "frames" and str(tmp_path) not in PRETRAINING.path(folder).read_text()
    card = CARD.path(folder).read_text()
    assert "masked image modelling" in card and "![Masked inputs and reconstructions](reconstructions.png)" in card
    assert RECONSTRUCTIONS_FIGURE.path(folder).is_file()

    # A checkpoint named on the command line replaces the config's model.from_config.
    tuned_config = tiny_config(tmp_path / "tune", model_type)
    cfg = load_config(tuned_config, [f"model.name_or_path={folder}"])
    assert cfg.model.from_config is None
    caplog.set_level(logging.INFO, logger="facemask")
    caplog.clear()
    model = build_model(cfg.model, {0: "with_mask", 1: "without_mask"}, {"with_mask": 0, "without_mask": 1})
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded "))
    assert "from out (pretraining run)" in line and "decoder" in line and "mask token" in line
    # BEiT's classifier pools with a norm of its own, new like the head.
    assert line.endswith("new: classifier (2 tensors)" if model_type == "vit" else
                         "new: beit.pooler (2 tensors), classifier (2 tensors)")
    assert not [r for r in caplog.records if "UNEXPECTED" in r.getMessage()]
    # Read back through from_pretrained: transformers saves under the Hub's names, not the modules'.
    head_class = ViTForMaskedImageModeling if model_type == "vit" else BeitForSimMIM
    pretrained = head_class.from_pretrained(folder).state_dict()
    encoder = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier")}
    prefix = "vit." if model_type == "vit" else "beit."
    for key, value in encoder.items():
        if key.startswith(f"{prefix}pooler"):
            continue  # BEiT's mean-pooling norm: part of the classifier, new like its head
        assert torch.equal(value, pretrained[key]), key
    assert not any(k.startswith("classifier") for k in pretrained)
    assert not any(k.endswith("mask_token") for k in model.state_dict())

    # And the whole fine-tuning run, with its card's Pretraining line.
    train.main([str(tuned_config), f"model.name_or_path={folder}"])
    tuned = tmp_path / "tune" / "out"
    assert "**Pretraining:** the encoder started from `out`, a masked image modelling run (simmim, 50%" in \
        CARD.path(tuned).read_text()
    assert json.loads((tuned / "run_info.json").read_text())["base_model"]["pretraining"]["images"] == \
        record["images"]


def test_pretraining_reads_a_dataset_of_images_without_labels(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    pictures = []
    for i in range(30):
        buffer = io.BytesIO()
        Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(buffer, format="PNG")
        pictures.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image()})
    (tmp_path / "frames").mkdir()
    datasets.Dataset.from_dict({"image": pictures}, features=features).to_parquet(tmp_path / "frames" / "train.parquet")
    record = pretrain.main([str(pretrain_config(tmp_path, data={"dataset_name": str(tmp_path / "frames"),
                                                                "validation_split": 0.2}))])
    assert record["images"] == {"train": 24, "validation": 6} and record["images_recorded"] == 30


def test_pretraining_resumes_from_its_checkpoint(tmp_path):
    config = pretrain_config(tmp_path, training={"save_strategy": "steps", "save_steps": 2, "logging_steps": 1})
    pretrain.main([str(config)])
    folder = tmp_path / "out"
    first = json.loads((folder / "trainer_state.json").read_text())["global_step"]
    pretrain.main([str(config), "training.max_steps=6", "--resume"])
    state = json.loads((folder / "trainer_state.json").read_text())
    assert first == 4 and state["global_step"] == 6
    # The first run's log entries are kept, the resumed steps added.
    steps = [e["step"] for e in state["log_history"] if "loss" in e]
    assert steps == sorted(steps) and steps[-1] == 6


def test_mask_generator_hides_the_ratio_in_whole_mask_patches():
    masks = MaskGenerator(image_size=32, patch_size=8, mask_patch_size=16, ratio=0.5)(64)
    grid = masks.reshape(64, 4, 4)
    assert masks.shape == (64, 16)
    # Each 16 px mask patch is 2x2 model patches, hidden or shown together; 2 of the 4 hidden.
    units = grid.reshape(64, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(64, 4, 4)
    assert bool((units == units[..., :1]).all())
    assert torch.equal(masks.sum(1), torch.full((64,), 8))
    assert len({tuple(m.tolist()) for m in masks}) > 1


@pytest.mark.parametrize("on_leak", ["drop", "error"])
def test_test_images_that_pretraining_used_are_leaks(tmp_path, on_leak, monkeypatch):
    data = {"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40, "test_split": 0.2}
    listed_before_training = []
    train_encoder = PretrainingTrainer.train

    def spy(self, *args, **kwargs):
        listed_before_training.append(PRETRAINING_IMAGES.path(self.args.output_dir).is_file())
        return train_encoder(self, *args, **kwargs)

    monkeypatch.setattr(PretrainingTrainer, "train", spy)
    # The same seed draws the same images: pretraining saw every image the fine-tuning tests on.
    pretrain.main([str(pretrain_config(tmp_path / "pre", data={**data, "validation_split": 0.0},
                                       training={"save_strategy": "steps", "save_steps": 2}))])
    assert listed_before_training == [True]
    source = tmp_path / "pre" / "out"
    if on_leak == "drop":
        # A checkpoint of a run stopped before its end (no pretraining.json yet), as the error for a
        # folder holding only checkpoints suggests: its run folder's listing is read.
        (source / PRETRAINING.name).unlink()
        source = source / "checkpoint-2"
    config = tiny_config(tmp_path / "tune", data={**data, "test_split": 0.5, "synthetic_num_images": 120,
                                                  "on_leak": on_leak})
    argv = [str(config), f"model.name_or_path={source}"]
    if on_leak == "error":
        with pytest.raises(ConfigError, match="test images that pretraining run out used"):
            train.main(argv)
        return
    metrics = train.main(argv)
    audit = json.loads((tmp_path / "tune" / "out" / "data_audit.json").read_text())
    removed = len(audit["pretraining"]["leaks"]["test"])
    assert 0 < removed < 60 and metrics["train"]["test_pretraining_images_removed"] == removed
    info = json.loads((tmp_path / "tune" / "out" / "run_info.json").read_text())
    assert info["data"]["splits"]["test"]["num_images"] == 60 - removed
    # evaluate.py --config carves the same test split, the same images left out.
    run = tmp_path / "tune" / "out"
    scored = evaluate.main([str(run), "--config", str(run / "experiment.yaml"), "--split", "test",
                            "--output-dir", str(tmp_path / "scored")])
    assert scored["test_accuracy"] == pytest.approx(metrics["test"]["test_accuracy"])


@pytest.mark.parametrize("override, message", [
    (["pretrain.mask_patch_size=12"], "'pretrain.mask_patch_size' is 12: it must be a whole number"),
    (["pretrain.mask_ratio=1.0"], "strictly between 0 and 1"),
    (["model.from_config.model_type=swin"], "no masked-image-modelling route"),
])
def test_bad_pretraining_input_exits_2_before_any_work(tmp_path, capsys, override, message):
    config = pretrain_config(tmp_path)
    if "swin" in override[0]:
        cfg = yaml.safe_load(config.read_text())
        cfg["model"]["from_config"] = {"model_type": "swin", "image_size": 32}
        config.write_text(yaml.safe_dump(cfg))
        override = []
    assert facemask_main(["pretrain", str(config), *override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", ["nothing", "checkpoints"])
def test_fine_tuning_from_a_folder_that_is_not_a_run_is_refused(tmp_path, inside):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    if inside == "checkpoints":
        (folder / "checkpoint-2").mkdir()
    config = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match="neither a pretraining run") as err:
        train.main([str(config), f"model.name_or_path={folder}"])
    assert ("--resume it" in str(err.value)) == (inside == "checkpoints")
    assert not (tmp_path / "out").exists()


def test_continued_pretraining_starts_from_a_checkpoints_encoder(evaluated_run, tmp_path, caplog):
    """model.name_or_path in a pretraining config: a trained classifier's encoder, its head left
    out, SimMIM's decoder new (continued pretraining, as from google/vit-base-patch16-224-in21k)."""
    caplog.set_level(logging.INFO, logger="facemask")
    config = pretrain_config(tmp_path)
    record = pretrain.main([str(config), f"model.name_or_path={evaluated_run}"])
    assert record["started_from"] == f"{evaluated_run.name} (training run)"
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded "))
    assert "left out the checkpoint's head: classifier (2 tensors)" in line and line.endswith("new: decoder (2 tensors) and the mask token")
    assert f"**Started from:** {evaluated_run.name} (training run)." in CARD.path(tmp_path / "out").read_text()


def _first_update(tmp_path, batch, accumulation):
    """One SGD step of a pretraining run on 8 images, as batch x accumulation micro-batches: its
    logged train_loss and the weights after the step. SGD, unclipped: the update is the gradient
    itself, so a loss scaled by the accumulation count shows as a step of another length (Adam's
    first step would hide it)."""
    config = pretrain_config(tmp_path, data={"synthetic": True, "synthetic_num_images": 10,
                                             "synthetic_image_size": 40, "validation_split": 0.2},
                             training={"max_steps": 1, "per_device_train_batch_size": batch,
                                       "gradient_accumulation_steps": accumulation, "optim": "sgd",
                                       "learning_rate": 0.5, "max_grad_norm": 0, "warmup_steps": 0},
                             reconstructions=0)
    record = pretrain.main([str(config)])
    model = ViTForMaskedImageModeling.from_pretrained(tmp_path / "out")
    return record["train_loss"], {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_gives_the_loss_and_update_of_the_same_effective_batch(tmp_path):
    whole_loss, whole = _first_update(tmp_path / "one", 8, 1)
    split_loss, split = _first_update(tmp_path / "four", 2, 4)
    assert split_loss == pytest.approx(whole_loss, rel=1e-4)
    for key in whole:
        assert torch.allclose(whole[key], split[key], atol=1e-5, rtol=1e-4), key


def test_a_hub_model_whose_images_cannot_be_read_is_said_to_be_unchecked(caplog):
    from facemask.data.seen import read_seen_images

    # Offline (the tests' HF_HUB_OFFLINE) with nothing cached: it may be a pretraining run; the check is
    # skipped with a warning, never silently.
    assert read_seen_images("someone/never-downloaded-encoder") is None
    assert "NOT checked" in caplog.text and "someone/never-downloaded-encoder" in caplog.text


def _simmim_l1(pixels, reconstruction, mask, patch):
    """SimMIM's objective written out: the mean absolute error over the masked pixels' values."""
    side = pixels.shape[-1] // patch
    hidden = mask.reshape(-1, side, side).repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]
    hidden = hidden.expand_as(pixels).float()
    return ((pixels - reconstruction).abs() * hidden).sum() / hidden.sum()


@pytest.mark.parametrize("model_type", ["vit", "beit"])
def test_both_routes_train_on_the_same_pixel_loss(model_type):
    from facemask.config.schema import ModelConfig
    from facemask.training.masked_modeling import pretraining_config

    config = pretraining_config(ModelConfig(from_config=TINY_MODELS[model_type]))
    model = (ViTForMaskedImageModeling if model_type == "vit" else BeitForSimMIM)(config).eval()
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32)
    mask = MaskGenerator(32, 8, 16, 0.5)(3, torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixel_values=pixels, bool_masked_pos=mask)
    assert out.reconstruction.shape == pixels.shape
    assert float(out.loss) == pytest.approx(float(_simmim_l1(pixels, out.reconstruction, mask, 8)), rel=1e-4)


def test_the_pretraining_loss_falls(tmp_path):
    config = pretrain_config(tmp_path, data={"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40,
                                             "validation_split": 0.2},
                             training={"max_steps": 24, "logging_steps": 1, "learning_rate": 3e-3}, reconstructions=0)
    pretrain.main([str(config)])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.9 * np.mean(losses[:6]), losses  # 0.41 -> 0.34 when first run
