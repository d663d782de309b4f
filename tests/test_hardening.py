"""Defects found in review, each pinned by a test that failed before its fix."""

import os
import shutil
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, tiny_config

import train
from facemask.config.dump import to_yaml
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError, DataConfig
from facemask.data.sources import load_sources
from facemask.data.storage import images_digest
from facemask.training.arguments import effective_batch_size
from facemask.training.performance import hardware_switches
from facemask.training.resume import overwrite_refusal


def test_overwrite_never_deletes_a_folder_it_did_not_make(tmp_path, monkeypatch):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    config = tiny_config(tmp_path, "vit", training={"output_dir": str(mine)})
    with pytest.raises(ConfigError, match="not made by train.py"):
        train.main([str(config), "--overwrite"])
    assert (mine / "thesis.tex").read_text() == "years of work"
    monkeypatch.chdir(tmp_path)
    for protected in (".", str(tmp_path.parent), str(REPO), str(REPO / "facemask"), os.path.expanduser("~")):
        assert "--overwrite would delete" in overwrite_refusal(__import__("pathlib").Path(protected))
    # An empty folder or a run's folder may go.
    assert overwrite_refusal(tmp_path / "empty") is None
    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    assert overwrite_refusal(run) is None


def test_the_commit_is_recorded_only_for_a_checkout_that_tracks_the_package(tmp_path, monkeypatch):
    """A package installed inside some other repository (a virtual environment in a checkout) must
    not record that repository's commit as the code's; a checkout that tracks it does."""
    import subprocess

    from facemask.training import provenance

    repo = tmp_path / "other"
    package = repo / "venv" / "facemask"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (repo / "notes.txt").write_text("another project")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "notes.txt")
    git("commit", "-qm", "another project")
    monkeypatch.setattr(provenance, "PACKAGE", package)
    assert provenance.git_state() == {}
    git("add", "venv/facemask/__init__.py")
    git("commit", "-qm", "the package")
    assert provenance.git_state() == {"commit": git("rev-parse", "HEAD"), "dirty": False}


def test_experiment_yaml_keeps_settings_that_mention_tokens(tmp_path):
    config = tiny_config(tmp_path, "vit", training={"average_tokens_across_devices": False,
                                                    "include_num_input_tokens_seen": "all",
                                                    "hub_token": "hf_" + "a" * 30})
    text = to_yaml(load_config(config))
    training = yaml.safe_load(text)["training"]
    assert training["average_tokens_across_devices"] is False
    assert training["include_num_input_tokens_seen"] == "all"
    assert "hub_token" not in training and "hf_aaaa" not in text


def test_effective_batch_size_counts_gpus_of_one_process():
    # python train.py on a 4-GPU host: one process, DataParallel over 4 GPUs.
    args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2, world_size=1, n_gpu=4)
    assert effective_batch_size(args) == 64
    # accelerate launch over 4 GPUs: 4 processes with one GPU each; on CPU n_gpu is 0.
    assert effective_batch_size(SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2,
                                                world_size=4, n_gpu=1)) == 64
    assert effective_batch_size(SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2,
                                                world_size=1, n_gpu=0)) == 16


def test_bf16_needs_native_support_and_the_run_records_what_ran(tmp_path, monkeypatch):
    import facemask.training.performance as performance

    monkeypatch.setattr(performance, "_gpu_has_native_bf16", lambda: False)  # a V100 or T4: emulated only
    values, notes = hardware_switches({"bf16": True}, gpu=True)
    assert values["bf16"] is False and "no native bfloat16" in notes[0]
    monkeypatch.setattr(performance, "_gpu_has_native_bf16", lambda: True)
    assert hardware_switches({"bf16": True}, gpu=True)[0]["bf16"] is True

    config = tiny_config(tmp_path, "vit", training={"bf16": True, "fp16": True})
    train.main([str(config)])
    info = __import__("json").loads((tmp_path / "out" / "run_info.json").read_text())
    switches = info["switches"]
    assert switches["asked"]["bf16"] is True and switches["asked"]["fp16"] is True
    assert switches["used"]["fp16"] is False  # no CUDA GPU here
    assert switches["used"]["attn_implementation"] in ("sdpa", "eager")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- Switches (asked -> used): bf16 True -> " in card and "fp16 True -> False" in card


def test_a_copy_that_keeps_size_and_mtime_changes_the_fingerprint(synth_folder, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(synth_folder, folder)
    cfg = DataConfig(train_dir=str(folder))
    before = images_digest(load_sources(cfg, 0).splits["train"], "image")
    victim = sorted((folder / "with_mask").iterdir())[0]
    stat = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p / rsync -a leave it
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    assert images_digest(load_sources(cfg, 0).splits["train"], "image") != before


def test_class_names_match_by_one_rule_in_training_too(synth_folder, tmp_path):
    val = tmp_path / "val"
    for source, target in (("with_mask", "With Mask"), ("without_mask", "without-mask")):
        (val / target).mkdir(parents=True)
        for p in sorted((synth_folder / source).iterdir())[:2]:
            shutil.copy(p, val / target / f"copy_{p.name}")
    data = load_sources(DataConfig(train_dir=str(synth_folder), validation_dir=str(val)), 0)
    names = sorted(p.name for p in val.rglob("*.*"))
    labels = {item["path"].split("/")[-2]: label for item, label in
              zip(data.splits["validation"]["image"], data.splits["validation"]["label"])}
    assert labels == {"With Mask": 0, "without-mask": 1} and len(names) == 4
    clash = tmp_path / "clash"
    shutil.copytree(synth_folder, clash)
    shutil.copytree(clash / "with_mask", clash / "With Mask")
    with pytest.raises(ConfigError, match="differ only in case"):
        load_sources(DataConfig(train_dir=str(clash), num_labels=3), 0)


def test_draft_decoding_of_large_jpegs_differs_slightly_from_a_full_decode(tmp_path):
    """The scope of "equal to the image processor": PNGs and JPEGs too small for draft decoding.
    A large JPEG is decoded at a reduced DCT scale (>= twice the model side) before the same
    resize, so its pixels differ a little from the processor's on a full decode; predictions agree."""
    import torch
    from conftest import TINY_MODELS
    from PIL import Image

    from facemask.config.schema import ModelConfig
    from facemask.data.images import load_image
    from facemask.data.synthetic import sample
    from facemask.pipeline.processor import load_image_processor
    from facemask.training.modeling import build_model

    cfg = ModelConfig(from_config=TINY_MODELS["vit"])
    processor = load_image_processor(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, {0: "with_mask", 1: "without_mask"}, {"with_mask": 0, "without_mask": 1}).eval()
    full, draft = [], []
    for k in range(8):
        path = tmp_path / f"big_{k}.jpg"
        sample(5, k, 96)[0].resize((1600, 1200), Image.Resampling.BICUBIC).save(path, quality=95)
        full.append(Image.open(path).convert("RGB"))
        draft.append(load_image(str(path), draft_side=64))
    # 1/8 scale by the JPEG's DCT (200x150), then halved by Image.reduce: the shorter side kept at
    # the draft side (64) or more; not 1600x1200.
    assert draft[0].size == (100, 75)
    a = processor(full, return_tensors="pt")["pixel_values"]
    b = processor(draft, return_tensors="pt")["pixel_values"]
    difference = (a - b).abs()
    print(f"draft vs full decode: mean {difference.mean():.4f}, max {difference.max():.4f}")
    assert difference.max() > 0  # not bit for bit
    assert difference.mean() < 0.02 and difference.max() < 0.5  # in normalised units (range 2)
    with torch.no_grad():
        la, lb = model(pixel_values=a).logits, model(pixel_values=b).logits
    assert torch.equal(la.argmax(-1), lb.argmax(-1))
    print(f"logits: max difference {(la - lb).abs().max():.5f}")
    assert (la - lb).abs().max() < 0.05


def test_the_drawn_set_is_drawn_once_and_then_read_back(tmp_path, monkeypatch):
    import facemask.data.synthetic as data

    first = data.stored_synthetic_dataset(30, 32, 5, tmp_path)
    monkeypatch.setattr(data, "synthetic_dataset", lambda *a: (_ for _ in ()).throw(AssertionError("drawn again")))
    again = data.stored_synthetic_dataset(30, 32, 5, tmp_path)
    assert again["label"] == first["label"]
    assert [i["bytes"] for i in again.cast_column("image", __import__("datasets").Image(decode=False))["image"]] == \
        [i["bytes"] for i in first.cast_column("image", __import__("datasets").Image(decode=False))["image"]]
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(AssertionError, match="drawn again"):
        data.stored_synthetic_dataset(30, 32, 6, tmp_path)  # another seed is another set
