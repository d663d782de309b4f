"""Machine-dependent settings: DataLoader, mixed precision, torch.compile, attention."""

import pytest
from conftest import tiny_config

from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.training.arguments import training_arguments
from facemask.training.performance import attention_implementation, dataloader_settings, hardware_switches


def test_cpu_training_reads_batches_in_the_main_process():
    chosen = dataloader_settings({}, "cache", cores=2, gpu=False, processes=1)
    assert chosen == {"dataloader_num_workers": 0, "dataloader_pin_memory": False,
                      "dataloader_persistent_workers": False, "dataloader_prefetch_factor": None}


@pytest.mark.parametrize("preprocess, cores, processes, workers", [
    ("cache", 16, 1, 2), ("per_image", 16, 1, 8), ("per_image", 16, 4, 3), ("cache", 2, 2, 0)])
def test_gpu_training_gets_workers_from_its_share_of_the_cores(preprocess, cores, processes, workers):
    chosen = dataloader_settings({}, preprocess, cores=cores, gpu=True, processes=processes)
    assert chosen["dataloader_num_workers"] == workers and chosen["dataloader_pin_memory"] is True
    assert chosen["dataloader_persistent_workers"] is (workers > 0)
    assert chosen["dataloader_prefetch_factor"] == (4 if workers else None)


def test_config_values_win_over_the_automatic_ones():
    chosen = dataloader_settings({"dataloader_num_workers": 3, "dataloader_pin_memory": False}, "cache",
                                 cores=16, gpu=True, processes=1)
    assert "dataloader_num_workers" not in chosen and "dataloader_pin_memory" not in chosen
    assert chosen["dataloader_persistent_workers"] is True and chosen["dataloader_prefetch_factor"] == 4


def test_switches_the_hardware_cannot_honour_are_turned_off_with_a_note():
    asked = {"fp16": True, "bf16": True, "torch_compile": True, "learning_rate": 1e-3}
    out, notes = hardware_switches(asked, gpu=False, bf16_supported=False, compile_check=(False, "no compiler"))
    assert out == {"fp16": False, "bf16": False, "torch_compile": False, "learning_rate": 1e-3}
    assert len(notes) == 3 and any("fp16 needs a CUDA GPU" in n for n in notes)
    assert asked["fp16"] is True  # the config itself (written to experiment.yaml) is left as asked


def test_switches_the_hardware_supports_stay_on():
    asked = {"bf16": True, "torch_compile": True}
    out, notes = hardware_switches(asked, gpu=False, bf16_supported=True, compile_check=(True, ""))
    assert out == asked and notes == []
    out, notes = hardware_switches({"fp16": True}, gpu=True)
    assert out == {"fp16": True} and notes == []


def test_fp16_on_this_cpu_run_is_a_warning_not_an_error(tmp_path):
    cfg = load_config(tiny_config(tmp_path, training={"fp16": True}))
    args = training_arguments(cfg)
    assert args.fp16 is False and cfg.training["fp16"] is True


def test_flash_attention_falls_back_to_sdpa_without_a_gpu():
    assert attention_implementation("flash_attention_2", gpu=False)[0] == "sdpa"
    assert attention_implementation("eager", gpu=False) == ("eager", [])
    assert attention_implementation(None, gpu=True) == (None, [])


def test_attention_and_preprocess_values_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="'model.attn_implementation'.*did you mean 'sdpa'"):
        load_config(tiny_config(tmp_path), ["model.attn_implementation=spda"])
    with pytest.raises(ConfigError, match="'data.preprocess': expected 'cache' or 'per_image'"):
        load_config(tiny_config(tmp_path), ["data.preprocess=fast"])


def _run_recording_the_average(tmp_path, monkeypatch, *overrides):
    """A 4-step run with a weight average (decay 0.9): (its results, its output folder, the
    WeightAverage, the trained weights by name after each optimizer step, the weights when the
    average was made)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import train
    from facemask.recipe.ema import WeightAverage

    made, after_steps = [], []
    init = WeightAverage.__init__

    def spy_init(self, model, *args, **kwargs):
        init(self, model, *args, **kwargs)
        made.append((self, model, {n: p.detach().clone() for n, p in model.named_parameters()}))

    def snapshot(optimizer, args, kwargs):
        names = {id(p): n for n, p in made[-1][1].named_parameters()}
        after_steps.append({names[id(p)]: p.detach().clone() for group in optimizer.param_groups
                            for p in group["params"]})

    hook = register_optimizer_step_post_hook(snapshot)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(WeightAverage, "__init__", spy_init)
            config = tiny_config(tmp_path, training={"max_steps": 4, "logging_steps": 1})
            results = train.main([str(config), "recipe.ema_decay=0.9", *overrides])
    finally:
        hook.remove()
    assert len(made) == 1 and len(after_steps) == 4
    average, _, initial = made[0]
    return results, tmp_path / "out", average, after_steps, initial


def _losses(out):
    import json

    from facemask.run_folder import TRAIN_LOG

    rows = [json.loads(line) for line in TRAIN_LOG.path(out).read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@pytest.mark.slow
def test_compiled_training_saves_the_weight_average_and_learns_as_uncompiled(tmp_path, monkeypatch):
    """torch.compile end to end, and the same run uncompiled (about 75 s on 2 cores): pytest -m slow."""
    import csv
    import importlib.util

    import torch
    from conftest import REPO
    from transformers import AutoModelForImageClassification

    from facemask.run_folder import PREDICTIONS
    from facemask.training.performance import _can_compile

    def saved_weights(folder):
        model = AutoModelForImageClassification.from_pretrained(folder)
        return {name: p.detach() for name, p in model.named_parameters()}

    supported, why = _can_compile(gpu=False)
    if not supported:
        pytest.skip(why)
    cfg = load_config(tiny_config(tmp_path), ["training.torch_compile=true"])
    assert training_arguments(cfg).torch_compile is True
    # With the weight average on: compiled parameter names carry a prefix the average must not.
    results, out, average, after_steps, initial = _run_recording_the_average(
        tmp_path / "compiled", monkeypatch, "training.torch_compile=true")
    assert "test_accuracy" in results["test"]

    # The saved model, loaded into a plain one, is the average (decay min(0.9, (1 + n) / (10 + n)) at
    # the n-th update, after each optimizer step), folded here by hand from the weights after each
    # step; not the live weights.
    saved = saved_weights(out)
    assert set(average.shadow) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(tensor, average.shadow[name].cpu()), name
        expected = initial[name]
        for n, step in enumerate(after_steps):
            decay = min(0.9, (1 + n) / (10 + n))
            expected = decay * expected + (1 - decay) * step[name]
        assert torch.allclose(tensor, expected, atol=1e-6), name
    live = after_steps[-1]
    assert max(float((saved[name] - live[name]).abs().max()) for name in saved) > 1e-4

    # The saved weights in a plain, uncompiled model (evaluate.py) predict what the compiled run
    # reported for its test split: the run evaluated the average it saved.
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO / "evaluate.py")
    evaluate_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate_script)
    evaluate_script.main([str(out), "--config", str(tmp_path / "compiled" / "config.yaml"),
                          "--output-dir", str(tmp_path / "plain")])
    with open(PREDICTIONS.path(out, "test"), newline="") as f:
        compiled_rows = list(csv.DictReader(f))
    with open(PREDICTIONS.path(tmp_path / "plain", "test"), newline="") as f:
        plain_rows = list(csv.DictReader(f))
    assert [r["file"] for r in compiled_rows] == [r["file"] for r in plain_rows] and len(plain_rows) == 12
    for a, b in zip(compiled_rows, plain_rows):
        assert float(a["prob_with_mask"]) == pytest.approx(float(b["prob_with_mask"]), abs=1e-5)

    # The same run uncompiled: the same losses step by step and the same saved average, to rounding
    # (measured on a 2-core CPU: losses within 1e-7 relative, weights within 4e-6).
    _, eager_out, _, _, _ = _run_recording_the_average(tmp_path / "eager", monkeypatch)
    compiled_losses, eager_losses = _losses(out), _losses(eager_out)
    assert len(compiled_losses) == 4 and compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    eager_saved = saved_weights(eager_out)
    assert all(torch.allclose(saved[name], eager_saved[name], atol=1e-4) for name in saved)


def test_attention_switch_reaches_the_model(tmp_path):
    from facemask.training.modeling import build_model

    cfg = load_config(tiny_config(tmp_path), ["model.attn_implementation=eager"])
    model = build_model(cfg.model, {0: "a", 1: "b"}, {"a": 0, "b": 1})
    assert model.config._attn_implementation == "eager"
