"""What is kept on disk heals: a damaged cache, inspection file or drawn set is rebuilt with a warning
naming it, and what a killed run left half-written is removed at the next start, never a live
process's or another host's."""

import json
import logging
import os
import socket
import subprocess
import sys

import datasets
import numpy as np
import pytest
from conftest import tiny_config

import train
from facemask.config.schema import ModelConfig
from facemask.data.inspection import inspect_splits
from facemask.data.storage import remove_stale_partials
from facemask.data.synthetic import stored_synthetic_dataset, synthetic_dataset
from facemask.pipeline.cache import CacheSpec, build_or_load
from facemask.pipeline.processor import load_image_processor


def _processor():
    return load_image_processor(ModelConfig(from_config={"model_type": "vit", "image_size": 32}))


def _cache(ds, root):
    return build_or_load(ds, "validation", "image", "label", CacheSpec.for_split(_processor(), False), _processor(),
                         root)


def _pixels(cached):
    return cached.__getitems__(list(range(len(cached))))["pixels"].numpy()


@pytest.mark.parametrize("damage", ["cut short", "rows in the record", "record cut short"])
def test_a_damaged_preprocessing_cache_is_rebuilt_with_a_warning(tmp_path, caplog, damage):
    ds = synthetic_dataset(24, 40, 3).cast_column("image", datasets.Image(decode=False))
    first, report = _cache(ds, tmp_path)
    expected = _pixels(first)
    folder = tmp_path / report.path.split("/")[-1]
    record_path = folder / "cache.json"
    record = json.loads(record_path.read_text())
    [name] = record["files"]
    del first
    if damage == "cut short":  # a copy interrupted, a disk that filled
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) * 3 // 4])
    elif damage == "rows in the record":
        record["files"][name]["rows"] += 1
        record_path.write_text(json.dumps(record))
    else:
        record_path.write_text(record_path.read_text()[:40])
    with caplog.at_level(logging.WARNING, logger="facemask"):
        again, report = _cache(ds, tmp_path)
    assert f"{folder} is damaged" in caplog.text and "rebuilding" in caplog.text
    assert not report.reused and np.array_equal(_pixels(again), expected)
    assert not list(tmp_path.glob(".*partial"))


def test_damaged_kept_inspections_are_redone(synth_folder, tmp_path, caplog):
    ds = datasets.load_dataset("imagefolder", data_dir=str(synth_folder), split="train")
    ds = ds.cast_column("image", datasets.Image(decode=False))
    first = inspect_splits({"train": ds}, "image", 8, 32, str(tmp_path))["train"]
    [kept] = tmp_path.glob("audit-*.json")
    kept.write_text(kept.read_text()[: len(kept.read_text()) // 2])
    with caplog.at_level(logging.WARNING, logger="facemask"):
        again = inspect_splits({"train": ds}, "image", 8, 32, str(tmp_path))["train"]
    assert f"{kept} is damaged" in caplog.text
    assert [f.sha256 for f in again] == [f.sha256 for f in first]
    assert len(json.loads(kept.read_text())) == len(ds)  # kept again, whole


def test_a_damaged_drawn_set_is_drawn_again(tmp_path, caplog):
    first = stored_synthetic_dataset(30, 32, 5, tmp_path)
    [folder] = [p for p in tmp_path.iterdir() if p.name.startswith("synthetic-")]
    for arrow in folder.glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="facemask"):
        again = stored_synthetic_dataset(30, 32, 5, tmp_path)
    assert f"{folder} is damaged" in caplog.text
    assert again["label"] == first["label"]
    assert len(datasets.load_from_disk(str(folder))) == 30  # stored again, whole


def _dead_pid():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_partials_of_dead_processes_of_this_host_are_removed_and_no_others(tmp_path, caplog):
    host, dead = socket.gethostname(), _dead_pid()
    names = {"dead": f".train-37px-abc.{host}.{dead}.0a1b2c3d.partial",
             "dead file": f".audit-abc.json.{host}.{dead}.99aa00ff.partial",
             "alive": f".eval-32px-abc.{host}.{os.getpid()}.0a1b2c3d.partial",
             "other host": f".train-37px-abc.another-node.{dead}.0a1b2c3d.partial",
             "not ours": "train-37px-abc", "user file": "notes.partial"}
    for key, name in names.items():
        (tmp_path / name).mkdir() if key != "dead file" else (tmp_path / name).write_text("{")
    with caplog.at_level(logging.INFO, logger="facemask"):
        removed = remove_stale_partials(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead file"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("alive", "other host", "not ours", "user file"))
    assert f"process {dead} of this host, which is no longer running" in caplog.text


def test_a_run_starts_by_removing_what_a_killed_run_left(tmp_path):
    cache = tmp_path / "cache"
    stale = cache / f".train-37px-abc.{socket.gethostname()}.{_dead_pid()}.0a1b2c3d.partial"
    stale.mkdir(parents=True)
    (stale / "pixels.arrow").write_bytes(b"\0" * 1000)
    train.main([str(tiny_config(tmp_path)), f"data.preprocess_dir={cache}"])
    assert not stale.exists() and any(cache.glob("train-*"))
