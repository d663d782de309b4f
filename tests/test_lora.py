"""model.peft: LoRA through peft, with the merged model at the top of the run folder and the
adapter in adapter/, resumed bit for bit, searched over its rank, refused where it cannot work."""

import json
import shutil

import pytest
import torch
import yaml
from conftest import REPO, TINY_MODELS, tiny_config
from safetensors.torch import load_file

import evaluate as evaluate_script
import train
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.data.synthetic import sample

REPO_TRAIN = REPO / "train.py"
LORA_TRAINING = {"max_steps": 4, "eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps",
                 "save_steps": 2, "load_best_model_at_end": True, "metric_for_best_model": "accuracy",
                 "learning_rate": 5e-3}


@pytest.fixture(scope="module")
def base_run(tiny_run):
    """A tiny trained ViT: the checkpoint LoRA adapts (as configs/quickstart-lora.yaml adapts outputs/quickstart)."""
    return tiny_run("vit").out


def lora_config(tmp_path, base, peft=None, recipe=None, training=None):
    return tiny_config(tmp_path, model={"name_or_path": str(base), "peft": peft or {"r": 4}},
                       training={**LORA_TRAINING, **(training or {})}, recipe=recipe)


def logits(model, pixels):
    with torch.no_grad():
        return model(pixel_values=pixels).logits


def test_lora_trains_adapters_and_head_only_and_saves_the_merged_model(tmp_path, base_run):
    from peft import PeftModel
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    # Layer decay on: it applies to what is trained.
    metrics = train.main([str(lora_config(tmp_path, base_run, recipe={"layer_decay": 0.8}))])
    out = tmp_path / "out"
    info = json.loads((out / "run_info.json").read_text())
    peft = info["peft"]
    hidden, layers = TINY_MODELS["vit"]["hidden_size"], TINY_MODELS["vit"]["num_hidden_layers"]
    # Rank-4 A and B on the four attention projections of each block, and the whole 2-way head.
    expected = layers * 4 * 4 * (hidden + hidden) + (hidden * 2 + 2)
    assert peft["trainable_parameters"] == expected and peft["method"] == "lora" and peft["r"] == 4
    assert 0 < peft["trainable_share"] < 0.15
    # The top level is a plain model: transformers must not find an adapter there to apply twice.
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4

    # Frozen weights stayed as the checkpoint had them; adapted projections and the head moved.
    before, after = load_file(base_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all("attention" in k or "classifier" in k for k in moved), moved
    assert any("classifier" in k for k in moved) and any("attention" in k for k in moved)
    assert not any("intermediate" in k or "layernorm" in k or "embeddings" in k for k in moved)

    # The merged model predicts as the checkpoint with the adapter applied by peft.
    processor = AutoImageProcessor.from_pretrained(out)
    images = [sample(5, i, 40)[0] for i in range(6)]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    merged = AutoModelForImageClassification.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base_run),
                                        out / "adapter").eval()
    assert torch.allclose(logits(merged, pixels), logits(adapted, pixels), atol=1e-5)

    # evaluate.py loads the run folder unchanged and finds what training measured.
    again = evaluate_script.main([str(out), "--config", str(out / "experiment.yaml"), "--split", "test",
                                  "--output-dir", str(tmp_path / "eval")])
    assert again["test_accuracy"] == pytest.approx(metrics["test"]["test_accuracy"])

    card = (out / "README.md").read_text()
    assert "### Fine-tuning method: LoRA" in card
    assert f"Trainable parameters: {expected:,} of {peft['total_parameters']:,}" in card
    assert "Adapter size: " in card and "kB (`adapter/`)" in card


def test_lora_resumes_bit_for_bit(tmp_path, base_run):
    straight = lora_config(tmp_path / "straight", base_run, training={"load_best_model_at_end": False})
    train.main([str(straight)])
    # An interrupted copy: the run as it stood at checkpoint-2, then resumed to the end.
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "straight", cut)
    cfg = yaml.safe_load((cut / "config.yaml").read_text())
    cfg["training"]["output_dir"] = str(cut / "out")
    (cut / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.rmtree(cut / "out" / "checkpoint-4")
    for name in ("model.safetensors", "adapter"):
        path = cut / "out" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train.main([str(cut / "config.yaml"), "--resume"])
    a, b = load_file(tmp_path / "straight" / "out" / "model.safetensors"), load_file(cut / "out" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a = load_file(tmp_path / "straight" / "out" / "adapter" / "adapter_model.safetensors")
    b = load_file(cut / "out" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lora_on_a_beit_checkpoint_and_its_rank_in_a_search(tiny_run, tmp_path, monkeypatch):
    import csv

    from facemask.__main__ import main
    from facemask.training import lora

    ranks = []
    add_adapters = lora.add_adapters

    def recording(model, cfg):
        ranks.append(cfg.r)
        return add_adapters(model, cfg)

    monkeypatch.setattr(lora, "add_adapters", recording)

    config = tiny_config(tmp_path / "search", "beit", model={"name_or_path": str(tiny_run("beit").out),
                                                            "peft": {"r": 2, "target_modules": ["q_proj", "v_proj"]}},
                         training={"max_steps": 2, "eval_strategy": "steps", "eval_steps": 1,
                                   "metric_for_best_model": "accuracy"})
    cfg = yaml.safe_load(config.read_text())
    cfg["search"] = {"space": {"model.peft.r": {"choice": [1, 8]}}}
    config.write_text(yaml.safe_dump(cfg))
    assert main(["search", str(config), "--trials", "2", "--output", str(tmp_path / "found")]) == 0
    best = yaml.safe_load((tmp_path / "found" / "best_config.yaml").read_text())
    assert best["model"]["peft"]["r"] in (1, 8)
    with open(tmp_path / "found" / "search_trials.csv", newline="") as f:
        trials = [int(float(row["model.peft.r"])) for row in csv.DictReader(f)]
    # Each trial's model was built with that trial's rank (after the set-up's own, of the config's r=2).
    assert len(trials) == 2 and ranks[-2:] == trials


def test_bad_lora_settings_are_errors_before_any_work(tmp_path, base_run):
    with pytest.raises(ConfigError, match=r"model.peft.*random-init.*model.name_or_path"):
        load_config(tiny_config(tmp_path / "a", model={"from_config": TINY_MODELS["vit"], "peft": {"r": 4}}))
    with pytest.raises(ConfigError, match="model.peft.r"):
        load_config(lora_config(tmp_path / "b", base_run, peft={"r": 0}))
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        load_config(lora_config(tmp_path / "c", base_run, peft={"r": 4, "alpah": 8}))
    with pytest.raises(ConfigError, match=r"no linear layer named query.*q_proj"):
        train.main([str(lora_config(tmp_path / "d", base_run, peft={"r": 4, "target_modules": ["query"]}))])
    assert not (tmp_path / "d" / "out" / "model.safetensors").exists()


def test_a_lora_run_predicts_an_image_as_the_run_folder_says(tmp_path, base_run):
    """predict (as export, detect and the demo) loads the merged top level with nothing LoRA-specific."""
    from facemask.__main__ import main

    train.main([str(lora_config(tmp_path, base_run, training={"max_steps": 2}))])
    image = tmp_path / "face.png"
    sample(9, 0, 40)[0].save(image)
    assert main(["predict", str(tmp_path / "out"), str(image), "--output", str(tmp_path / "p.csv")]) == 0
    assert "face.png" in (tmp_path / "p.csv").read_text()


def test_a_lora_run_pushes_the_merged_model_and_its_adapter_folder(tmp_path, base_run):
    from fake_hub import FakeHub
    from test_hub import run

    train.main([str(lora_config(tmp_path, base_run, training={"max_steps": 2}))])
    with FakeHub() as hub:
        result = run(["-m", "facemask", "push", str(tmp_path / "out"), "--model-id", "tester/lora"], hub, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    files = set(hub.commits[0]["files"])
    for name, content in hub.commits[0]["files"].items():
        if name.endswith((".json", ".yaml", ".md")):  # the adapter's config names its base model: not by path
            assert str(tmp_path) not in content.decode() and str(base_run) not in content.decode(), name
    assert {"model.safetensors", "config.json", "adapter/adapter_config.json",
            "adapter/adapter_model.safetensors"} <= files
    assert "adapter_config.json" not in files and not any(f.startswith("checkpoint-") for f in files)


def test_a_plain_run_has_no_adapter_and_no_teacher(evaluated_run):
    """Defaults unchanged: without model.peft and recipe.distill nothing of either is written."""
    info = json.loads((evaluated_run / "run_info.json").read_text())
    assert "peft" not in info and not (evaluated_run / "adapter").exists()
    assert not (evaluated_run / "teacher.json").exists()
    card = (evaluated_run / "README.md").read_text()
    assert "Fine-tuning method" not in card and "### Distillation" not in card


@pytest.mark.slow  # a two-process accelerate launch: tens of seconds
def test_lora_with_a_teacher_under_accelerate_launch(tmp_path, base_run):
    """LoRA and distillation together, two processes: one adapter, one teacher.json, the same
    evaluation counts as one process makes."""
    from test_distributed import launch

    config = lora_config(tmp_path, base_run, recipe={"distill": {"teacher": str(base_run)}},
                         training={"per_device_train_batch_size": 4})
    result = launch([str(REPO_TRAIN), str(config)])
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["peft"]["r"] == 4
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    teacher = json.loads((out / "teacher.json").read_text())
    sizes = info["data"]["splits"]
    assert set(teacher["results"]) == set(teacher["results_as_used"]) == {"eval", "test"}
    for prefix, split in (("eval", "validation"), ("test", "test")):
        matrix = json.loads((out / f"{prefix}_confusion_matrix.json").read_text())
        assert sum(map(sum, matrix["matrix"])) == sizes[split]["num_images"]
    assert result.stderr.count("model card:") == 1


def test_ema_with_lora_is_refused_before_any_work(tmp_path, base_run):
    # avg(B) avg(A) is not avg(BA): the saved merged weight would be one no step of training held.
    with pytest.raises(ConfigError, match="'recipe.ema_decay' with 'model.peft' is not supported"):
        train.main([str(lora_config(tmp_path, base_run, recipe={"ema_decay": 0.9}))])
    assert not (tmp_path / "out").exists()


def test_ema_under_a_sharded_launch_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="'recipe.ema_decay' under FSDP or DeepSpeed is not supported"):
        train.main([str(tiny_config(tmp_path, recipe={"ema_decay": 0.9}))])
    assert not (tmp_path / "out" / "data_audit.json").exists()


def test_lora_under_a_sharded_launch_is_refused_before_any_work(tmp_path, base_run, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with fsdp.yaml sets
    with pytest.raises(ConfigError, match="FSDP or DeepSpeed.*DDP"):
        train.main([str(lora_config(tmp_path, base_run))])
    assert not (tmp_path / "out" / "data_audit.json").exists()
