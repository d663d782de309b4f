"""Defects found in review, each pinned by a test that failed before its fix."""

import os
import shutil
from types import SimpleNamespace

import pytest
import yaml

import train
from conftest import REPO, tiny_config
from facemask.cache import images_digest
from facemask.config import ConfigError, DataConfig, load_config, to_yaml
from facemask.data import load_sources
from facemask.performance import hardware_switches
from facemask.training import effective_batch_size, overwrite_refusal


def test_overwrite_never_deletes_a_folder_it_did_not_make(tmp_path, monkeypatch):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    config = tiny_config(tmp_path, "vit", training={"output_dir": str(mine)})
    with pytest.raises(ConfigError, match="not made by train.py"):
        train.main([str(config), "--overwrite"])
    assert (mine / "thesis.tex").read_text() == "years of work"
    monkeypatch.chdir(tmp_path)
    for protected in (".", str(tmp_path.parent), str(REPO), os.path.expanduser("~")):
        assert "--overwrite would delete" in overwrite_refusal(__import__("pathlib").Path(protected))
    # An empty folder or a run's folder may go.
    assert overwrite_refusal(tmp_path / "empty") is None
    run = tmp_path / "run"
    (run / "checkpoint-5").mkdir(parents=True)
    assert overwrite_refusal(run) is None


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
    import facemask.performance as performance

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
