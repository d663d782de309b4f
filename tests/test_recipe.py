"""The training recipe's switches: parameter groups and layer decay, the loss, mixing, EMA,
class imbalance, early stopping and model config overrides."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, TINY_MODELS, tiny_config
from PIL import Image
from transformers import AutoConfig, AutoModelForImageClassification

import train
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError, ModelConfig
from facemask.recipe.balance import BalancedSampler
from facemask.recipe.ema import WeightAverage
from facemask.recipe.loss import class_weights, smoothed_targets, soft_cross_entropy
from facemask.recipe.mixing import Mixer
from facemask.recipe.param_groups import parameter_groups
from facemask.training.modeling import build_model


def tiny_model(model_type):
    config = AutoConfig.for_model(**TINY_MODELS[model_type], num_labels=2)
    return AutoModelForImageClassification.from_config(config)


# Every parameter of the tiny models (2 blocks), its layer id and whether it is decayed, written
# out by hand from the rules: embeddings 0, block i -> i + 1, the rest 3; weight matrices decay.
def expected_groups(model_type):
    prefix = model_type
    rows = {}
    if model_type == "vit":
        rows.update({f"{prefix}.embeddings.cls_token": (0, False),
                     f"{prefix}.embeddings.position_embeddings": (0, False)})
    else:
        rows.update({f"{prefix}.embeddings.cls_token": (0, False)})
    rows.update({f"{prefix}.embeddings.patch_embeddings.projection.weight": (0, True),
                 f"{prefix}.embeddings.patch_embeddings.projection.bias": (0, False)})
    for i in range(2):
        block = f"{prefix}.layers.{i}"
        names = {"attention.q_proj.weight": True, "attention.q_proj.bias": False,
                 "attention.k_proj.weight": True, "attention.v_proj.weight": True,
                 "attention.v_proj.bias": False, "attention.o_proj.weight": True,
                 "attention.o_proj.bias": False, "mlp.fc1.weight": True, "mlp.fc1.bias": False,
                 "mlp.fc2.weight": True, "mlp.fc2.bias": False,
                 "layernorm_before.weight": False, "layernorm_before.bias": False,
                 "layernorm_after.weight": False, "layernorm_after.bias": False}
        if model_type == "vit":
            names["attention.k_proj.bias"] = False
        else:
            names.update({"lambda_1": False, "lambda_2": False,
                          "relative_position_bias.relative_position_bias_table": False})
        rows.update({f"{block}.{name}": (i + 1, decay) for name, decay in names.items()})
    tail = {"classifier.weight": True, "classifier.bias": False}
    if model_type == "vit":
        tail.update({"vit.layernorm.weight": False, "vit.layernorm.bias": False})
    else:
        tail.update({"beit.pooler.layernorm.weight": False, "beit.pooler.layernorm.bias": False})
    rows.update({name: (3, decay) for name, decay in tail.items()})
    return rows


@pytest.mark.parametrize("model_type", ["vit", "beit"])
def test_every_parameter_gets_its_layer_learning_rate_and_decay(model_type):
    model = tiny_model(model_type)
    groups = parameter_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    seen = {}
    for group in groups:
        for name in group["names"]:
            seen[name] = (group["lr"], group["weight_decay"])
    expected = expected_groups(model_type)
    assert set(seen) == {n for n, p in model.named_parameters()} == set(expected)
    for name, (layer, decay) in expected.items():
        # L = 2: head lr, block 1 lr x 0.5, block 0 lr x 0.25, embeddings lr x 0.125.
        assert seen[name] == (0.5 ** (3 - layer), 0.05 if decay else 0.0), name
    # Without layer decay: one learning rate, the same exemptions.
    flat = parameter_groups(model, lr=1e-3, weight_decay=0.05)
    assert {g["lr"] for g in flat} == {1e-3} and len(flat) == 2
    decayed = {n for g in flat if g["weight_decay"] for n in g["names"]}
    assert decayed == {n for n, (_, decay) in expected.items() if decay}


def test_the_loss_matches_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    log_p = [[x - math.log(math.exp(a) + math.exp(b)) for x in (a, b)] for a, b in logits.tolist()]

    plain = soft_cross_entropy(logits, smoothed_targets(labels, 2))
    assert plain.item() == pytest.approx(-(log_p[0][0] + log_p[1][1] + log_p[2][1]) / 3, rel=1e-6)
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)

    # Smoothing 0.2 with 2 classes: targets 0.9 / 0.1.
    smoothed = soft_cross_entropy(logits, smoothed_targets(labels, 2, 0.2))
    by_hand = -sum(0.9 * log_p[i][y] + 0.1 * log_p[i][1 - y] for i, y in enumerate([0, 1, 1])) / 3
    assert smoothed.item() == pytest.approx(by_hand, rel=1e-6)

    # Class weights [1, 3] with smoothing: weighted sum over the weighted target mass.
    weights = torch.tensor([1.0, 3.0])
    weighted = soft_cross_entropy(logits, smoothed_targets(labels, 2, 0.2), weights)
    num = den = 0.0
    for i, y in enumerate([0, 1, 1]):
        for c in (0, 1):
            t = 0.9 if c == y else 0.1
            num -= weights[c].item() * t * log_p[i][c]
            den += weights[c].item() * t
    assert weighted.item() == pytest.approx(num / den, rel=1e-6)
    # Hard targets: torch's weighted cross_entropy.
    hard = soft_cross_entropy(logits, smoothed_targets(labels, 2), weights)
    assert hard.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels, weight=weights).item(),
                                        rel=1e-6)

    # Mixed targets (lam 0.7 with the batch reversed), smoothing and weights together.
    targets = smoothed_targets(labels, 2, 0.2)
    mixed = targets * 0.7 + targets.flip(0) * 0.3
    num = den = 0.0
    for i in range(3):
        for c in (0, 1):
            num -= weights[c].item() * mixed[i, c].item() * log_p[i][c]
            den += weights[c].item() * mixed[i, c].item()
    assert soft_cross_entropy(logits, mixed, weights).item() == pytest.approx(num / den, rel=1e-6)


def test_class_weights_balanced_explicit_and_misspelt():
    labels = ["with_mask", "without_mask"]
    balanced = class_weights("balanced", labels, {"with_mask": 10, "without_mask": 90})
    assert balanced.tolist() == pytest.approx([100 / (2 * 10), 100 / (2 * 90)])
    assert class_weights({"with_mask": 4}, labels, {}).tolist() == [4.0, 1.0]
    with pytest.raises(ConfigError, match="recipe.class_weights.with_mask.*did you mean 'with_mask'"):
        class_weights({"with_mask ": 2}, labels, {})
    with pytest.raises(ConfigError, match="no images of"):
        class_weights("balanced", labels, {"with_mask": 5, "without_mask": 0})


def test_mixing_is_keyed_by_step_and_keeps_target_mass():
    pixels = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).view(4, 3, 8, 8)
    targets = smoothed_targets(torch.tensor([0, 1, 1, 0]), 2, 0.1)
    mixer = Mixer(mixup_alpha=0.8, cutmix_alpha=1.0, seed=3)
    draws = [mixer.draw(step, 0, 8, 8) for step in range(40)]
    assert draws == [mixer.draw(step, 0, 8, 8) for step in range(40)]  # same key, same draw
    assert {kind for kind, _, _ in draws} == {"mixup", "cutmix"}
    for step, (kind, lam, box) in enumerate(draws):
        mixed, mixed_targets = mixer(pixels, targets, step)
        assert torch.allclose(mixed_targets.sum(1), torch.ones(4))
        assert torch.allclose(mixed_targets, targets * lam + targets.flip(0) * (1 - lam))
        if kind == "cutmix":
            top, bottom, left, right = box
            # lambda is the share of each image left uncovered by the pasted box.
            assert lam == pytest.approx(1 - (bottom - top) * (right - left) / 64)
            assert torch.equal(mixed[0, :, top:bottom, left:right], pixels[3, :, top:bottom, left:right])
        else:
            assert torch.allclose(mixed, pixels * lam + pixels.flip(0) * (1 - lam))
    off = Mixer(0.0, 0.0)
    assert not off.active and off(pixels, targets, 0)[0] is pixels


def test_weight_average_update_warmup_and_swap():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightAverage(model, decay=0.9, warmup=True, every=2)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.step(global_step=1)  # not an update step
    assert ema.updates == 0 and torch.equal(ema.shadow["weight"], torch.ones(1, 2))
    ema.step(global_step=2)  # warmup decay min(0.9, 1/10) = 0.1
    assert ema.shadow["weight"].flatten().tolist() == pytest.approx([0.1 * 1 + 0.9 * 3] * 2)
    with ema.applied(model):
        assert model.weight.flatten().tolist() == pytest.approx([2.8, 2.8])
    assert model.weight.tolist() == [[3.0, 3.0]]


def test_the_average_follows_parameters_replaced_after_set_up(tmp_path):
    # What the Trainer does when it places the model on its device only at train() (fp16_full_eval),
    # or any move that gives parameters new storage: the average must follow the weights that train.
    from facemask.training.setup import RunSetup

    cfg = load_config(tiny_config(tmp_path, recipe={"ema_decay": 0.5, "ema_warmup": False},
                                  training={"learning_rate": 0.05}))
    run = RunSetup.start(cfg)
    run.load_data()
    trainer = run.build()
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model._apply(lambda t: t.clone())
    trainer.train()
    average = trainer.ema.shadow
    moved = [k for k in average if not torch.equal(average[k], start[k])]
    assert len(moved) == len(average), f"{len(average) - len(moved)} averaged tensors never moved"
    final = dict(trainer.model.named_parameters())
    assert all(torch.equal(average[k], final[k]) for k in average)  # train() put the average in the model


def test_balanced_sampler_draws_classes_evenly_and_by_epoch():
    labels = [0] * 10 + [1] * 90
    sampler = BalancedSampler(labels, seed=0)
    first = sampler.indices()
    assert first == BalancedSampler(labels, seed=0).indices()
    share = np.mean([labels[i] == 0 for i in first])
    assert 0.35 < share < 0.65  # 10% of the data, about half of the draws
    sampler.set_epoch(1)
    assert sampler.indices() != first


def test_recipe_config_errors(tmp_path):
    config = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match="early_stopping_patience' needs evaluations"):
        load_config(config, ["recipe.early_stopping_patience=2"])
    with pytest.raises(ConfigError, match="choose one"):
        load_config(config, ["recipe.class_weights=balanced", "recipe.balanced_sampler=true"])
    with pytest.raises(ConfigError, match="unknown key 'recipe.ema_decy'; did you mean 'ema_decay'"):
        load_config(config, ["recipe.ema_decy=0.99"])
    with pytest.raises(ConfigError, match="recipe.class_weights': expected 'balanced'"):
        load_config(config, ["recipe.class_weights=inverse"])
    with pytest.raises(ConfigError, match="recipe.layer_decay"):
        load_config(config, ["recipe.layer_decay=1.5"])


def test_model_config_overrides_are_checked_against_the_config_class():
    labels = {0: "with_mask", 1: "without_mask"}
    beit = ModelConfig(from_config=TINY_MODELS["beit"],
                       config_overrides={"drop_path_rate": 0.2, "layer_scale_init_value": 0.01})
    model = build_model(beit, labels, {v: k for k, v in labels.items()})
    assert model.config.drop_path_rate == 0.2
    assert model.beit.layers[0].lambda_1.detach().eq(0.01).all()
    vit = ModelConfig(from_config=TINY_MODELS["vit"], config_overrides={"drop_path_rate": 0.1})
    with pytest.raises(ConfigError, match=r"model.config_overrides.drop_path_rate' for ViTConfig"):
        build_model(vit, labels, {v: k for k, v in labels.items()})
    vit = ModelConfig(from_config=TINY_MODELS["vit"], config_overrides={"hidden_dropout_prob": 0.1})
    assert build_model(vit, labels, {v: k for k, v in labels.items()}).config.hidden_dropout_prob == 0.1


def test_model_config_overrides_apply_to_a_checkpoint(tmp_path):
    labels = {0: "with_mask", 1: "without_mask"}
    tiny_model("beit").save_pretrained(tmp_path / "ckpt")
    cfg = ModelConfig(name_or_path=str(tmp_path / "ckpt"), config_overrides={"drop_path_rate": 0.3})
    assert build_model(cfg, labels, {v: k for k, v in labels.items()}).config.drop_path_rate == 0.3
    cfg = ModelConfig(name_or_path=str(tmp_path / "ckpt"), config_overrides={"drop_pth_rate": 0.3})
    with pytest.raises(ConfigError, match="did you mean 'drop_path_rate'"):
        build_model(cfg, labels, {v: k for k, v in labels.items()})


def draw_overlapping(root: Path, counts: dict, seed: int, shift: float = 1.5, size: int = 32) -> Path:
    """Two classes that overlap, as real ones do: the lower half of a 'with_mask' image is brighter
    by a random amount drawn around `shift` standard deviations, a 'without_mask' one's around 0.
    A model learns the cue in a few steps, but on a 1:9 set the unweighted loss is lowest when it
    answers the majority class wherever the classes overlap."""
    rng = np.random.default_rng(seed)
    for label, count in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            lower = rng.normal(shift if label == "with_mask" else 0.0, 1.0) * 25
            pixels = 110 + rng.normal(0, 20) + rng.normal(0, 8, (size, size, 3))
            pixels[size // 2:] += lower
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / label / f"{k:04d}.png")
    return root


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    root = tmp_path_factory.mktemp("imbalanced")
    train_dir = draw_overlapping(root / "train", {"with_mask": 30, "without_mask": 270}, seed=1)
    test_dir = draw_overlapping(root / "test", {"with_mask": 100, "without_mask": 100}, seed=2)
    return train_dir, test_dir


def test_class_weights_raise_balanced_accuracy_on_a_1_to_9_set(imbalanced, tmp_path):
    train_dir, test_dir = imbalanced
    data = {"train_dir": str(train_dir), "test_dir": str(test_dir), "validation_split": 0.0,
            "max_class_ratio": 100.0}
    training = {"max_steps": -1, "num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 2e-3}
    results = {}
    for name, recipe in (("plain", []), ("weighted", ["recipe.class_weights=balanced"]),
                         ("sampled", ["recipe.balanced_sampler=true"])):
        config = tiny_config(tmp_path / name, data=data, training=training)
        results[name] = train.main([str(config), *recipe])["test"]
    balanced = {name: r["test_balanced_accuracy"] for name, r in results.items()}
    # Measured: plain 0.50 (it answers the majority class), weighted 0.68, sampled 0.685.
    assert balanced["weighted"] > balanced["plain"] + 0.1, balanced
    assert balanced["sampled"] > balanced["plain"] + 0.1, balanced


def test_audit_names_both_imbalance_switches(imbalanced, tmp_path, caplog):
    train_dir, test_dir = imbalanced
    config = tiny_config(tmp_path, data={"train_dir": str(train_dir), "test_dir": str(test_dir)})
    caplog.set_level("WARNING", logger="facemask")
    train.main([str(config), "training.max_steps=1"])
    assert "recipe.class_weights=balanced" in caplog.text and "recipe.balanced_sampler=true" in caplog.text


def test_early_stopping_stops_and_says_when(tmp_path):
    # A learning rate of zero: validation never improves, so patience 1 stops after the second evaluation.
    training = {"max_steps": 12, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps",
                "save_steps": 2, "load_best_model_at_end": True, "metric_for_best_model": "accuracy",
                "learning_rate": 0.0}
    config = tiny_config(tmp_path, training=training)
    results = train.main([str(config), "recipe.early_stopping_patience=1"])
    assert results["train"]["early_stopped_at_step"] == 4
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Early stopping: stopped at epoch" in card and "step 4" in card


def test_recipe_run_records_its_switches_and_evaluates_the_average(tmp_path):
    training = {"max_steps": 6, "eval_strategy": "steps", "eval_steps": 3, "save_strategy": "steps",
                "save_steps": 3, "load_best_model_at_end": True, "metric_for_best_model": "loss",
                "greater_is_better": False, "label_smoothing_factor": 0.1, "weight_decay": 0.05}
    config = tiny_config(tmp_path, training=training)
    train.main([str(config), "recipe.ema_decay=0.9", "recipe.mixup_alpha=0.4", "recipe.cutmix_alpha=1.0",
                "recipe.layer_decay=0.75"])
    out = tmp_path / "out"
    assert (out / "checkpoint-6" / "ema.safetensors").is_file()
    # The saved model is the weight average of the best checkpoint.
    from safetensors.torch import load_file

    best = json.loads((out / "trainer_state.json").read_text())["best_model_checkpoint"]
    average = load_file(Path(best) / "ema.safetensors")
    saved = AutoModelForImageClassification.from_pretrained(out)
    params = dict(saved.named_parameters())
    assert all(torch.equal(params[name], tensor) for name, tensor in average.items())
    card = (out / "README.md").read_text()
    for line in ("| recipe.ema_decay | 0.9 |", "| recipe.layer_decay | 0.75 |", "| recipe.mixup_alpha | 0.4 |",
                 "| label_smoothing_factor | 0.1 |", "(its exponential moving average of the weights)",
                 "- Weight decay: on weight matrices only"):
        assert line in card


def test_tensorboard_tracking_writes_event_files_offline(tmp_path):
    config = tiny_config(tmp_path, training={"report_to": "tensorboard", "logging_steps": 1})
    train.main([str(config)])
    events = list((tmp_path / "out" / "runs").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert "train/loss" in accumulator.Tags()["scalars"]


@pytest.mark.slow  # a train.py process: ~10 s on 2 busy cores
def test_trackio_tracking_logs_locally_offline(tmp_path):
    # A subprocess: trackio fixes its storage folder (TRACKIO_DIR) when first imported.
    import os
    import sqlite3
    import subprocess
    import sys

    config = tiny_config(tmp_path, training={"report_to": "trackio", "logging_steps": 1, "project": "facemask-test",
                                             "run_name": "tiny"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRACKIO_DIR": str(tmp_path / "trackio")}
    done = subprocess.run([sys.executable, "train.py", str(config)], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [database] = (tmp_path / "trackio").glob("facemask-test*.db")
    with sqlite3.connect(database) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = db.execute("SELECT run_name, step, metrics FROM metrics").fetchall()
    assert "metrics" in tables and {run for run, _, _ in rows} == {"tiny"}
    logged = [json.loads(metrics) for _, _, metrics in rows]
    assert sum("train/loss" in entry for entry in logged) == 2  # logging_steps 1, max_steps 2


def test_a_missing_tracker_package_names_the_pip_command(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    config = tiny_config(tmp_path, training={"report_to": ["trackio"]})
    with pytest.raises(ConfigError, match=r"report_to' includes 'trackio'.*pip install trackio=="):
        train.main([str(config)])


def test_console_shows_a_bar_and_one_line_per_evaluation(tmp_path, capfd):
    training = {"max_steps": 6, "eval_strategy": "steps", "eval_steps": 3, "logging_steps": 1,
                "disable_tqdm": False}
    train.main([str(tiny_config(tmp_path, training=training))])
    printed = capfd.readouterr()
    console = printed.out + printed.err
    assert "{'loss'" not in console and "'eval_loss'" not in console  # no raw dicts
    lines = [line for line in console.splitlines() if "validation: accuracy" in line]
    assert len(lines) == 3 and lines[0].startswith("epoch ")  # steps 3 and 6, and the final evaluation
    assert "training" in console and "6/6" in console  # the progress (lines: the output is captured) reached the end
    logged = [json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()]
    assert sum("loss" in entry for entry in logged) == 6 and sum("eval_accuracy" in entry for entry in logged) == 3


def test_photometric_augmentation_is_keyed_and_leaves_the_global_rng_alone():
    from facemask.pipeline.photometric import PhotometricAugment
    from facemask.pipeline.processor import load_image_processor

    processor = load_image_processor(ModelConfig(from_config=TINY_MODELS["vit"]))
    augment = PhotometricAugment(0.4, 2, 9, 0.5, processor, seed=0)
    pixels = torch.rand(8, 3, 32, 32) * 2 - 1  # normalised with mean = std = 0.5
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = augment(pixels, step=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(a, augment(pixels, step=5)) and not torch.equal(a, augment(pixels, step=6))
    assert a.shape == pixels.shape and not torch.equal(a, pixels)
    assert a.min() >= -1.0 - 1e-6 and a.max() <= 1.0 + 1e-6  # still within the normalised range


def test_corruption_augmentation_corrupts_about_the_share_asked_and_is_keyed():
    from facemask.pipeline.photometric import PhotometricAugment
    from facemask.pipeline.processor import load_image_processor

    processor = load_image_processor(ModelConfig(from_config=TINY_MODELS["vit"]))
    pixels = torch.rand(400, 3, 32, 32) * 2 - 1
    for share in (0.25, 1.0):
        augment = PhotometricAugment(0, 0, 9, 0, processor, seed=0, corruption_augment=share)
        out = augment(pixels, step=1)
        assert torch.equal(out, augment(pixels, step=1))
        changed = ((out - pixels).abs().flatten(1).amax(dim=1) > 0.02).float().mean().item()
        # Five corruptions, each on share / 5 of the images: about 1 - (1 - share / 5) ** 5 meet one.
        expected = 1 - (1 - share / 5) ** 5
        assert abs(changed - expected) < 0.08, (share, changed, expected)
        assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6  # noise leaves no pixel outside [0, 1]
    with pytest.raises(ConfigError, match="corruption_augment"):
        load_config(REPO / "configs" / "quickstart.yaml", ["recipe.corruption_augment=2"])


@pytest.mark.slow
def test_a_run_with_photometric_augmentation_trains(tmp_path):
    results = train.main([str(tiny_config(tmp_path)), "recipe.color_jitter=0.4", "recipe.rand_augment_n=2",
                          "recipe.random_erasing=0.25"])
    assert results["train"]["train_loss"] > 0
    assert "| recipe.color_jitter | 0.4 |" in (tmp_path / "out" / "README.md").read_text()
