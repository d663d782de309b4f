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


@pytest.mark.slow
def test_compiled_training_runs_where_a_compiler_is_found(tmp_path):
    """torch.compile end to end (about 40 s of compiling on 2 cores): pytest -m slow."""
    import train
    from facemask.training.performance import _can_compile

    supported, why = _can_compile(gpu=False)
    if not supported:
        pytest.skip(why)
    cfg = load_config(tiny_config(tmp_path), ["training.torch_compile=true"])
    assert training_arguments(cfg).torch_compile is True
    # With the weight average on: compiled parameter names carry a prefix the average must not.
    results = train.main([str(tiny_config(tmp_path)), "training.torch_compile=true", "recipe.ema_decay=0.9"])
    assert results["train"]["train_loss"] > 0 and "test_accuracy" in results["test"]


def test_attention_switch_reaches_the_model(tmp_path):
    from facemask.training.modeling import build_model

    cfg = load_config(tiny_config(tmp_path), ["model.attn_implementation=eager"])
    model = build_model(cfg.model, {0: "a", 1: "b"}, {"a": 0, "b": 1})
    assert model.config._attn_implementation == "eager"
