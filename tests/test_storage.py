"""What is kept on disk heals: a damaged cache, inspection file or drawn set is rebuilt with a warning
naming it, and what a killed run left half-written is removed at the next start, never a live
process's or another host's."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
from conftest import REPO, tiny_config

import train
from facemask.config.schema import ConfigError, ModelConfig
from facemask.data.inspection import inspect_splits
from facemask.data.storage import read_checked, remove_stale_partials
from facemask.data.synthetic import stored_synthetic_dataset, synthetic_dataset
from facemask.pipeline.cache import CacheSpec, build_or_load
from facemask.pipeline.processor import load_image_processor


# Temporary names carry the host without its dots (data/storage.py's unique_suffix).
HOST = socket.gethostname().replace(".", "-")


def _processor():
    return load_image_processor(ModelConfig(from_config={"model_type": "vit", "image_size": 32}))


def _cache(ds, root):
    return build_or_load(ds, "validation", "image", "label", CacheSpec.for_split(_processor(), False), _processor(),
                         root)


def _pixels(cached):
    return cached.__getitems__(list(range(len(cached))))["pixels"].numpy()


def _zero_block(path, at):
    """4 KiB at `at` (a fraction of the file) overwritten with zeros, as a crash leaves blocks never
    written: the file keeps its size."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    before = bytes(data)
    data[start:start + 4096] = bytes(len(data[start:start + 4096]))
    assert bytes(data) != before and len(data) == len(before)
    path.write_bytes(bytes(data))


def _flip_bits(path, at):
    """Three bits flipped in one byte at `at` (a fraction of the file); the size unchanged."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0b10100100
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["cut short", "rows in the record", "record cut short", "zeroed block",
                                    "flipped bits", "zeroed block and flipped bits"])
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
    elif damage == "record cut short":
        record_path.write_text(record_path.read_text()[:40])
    else:  # the content damaged at the right size: the pixels, where nothing else would notice
        size = (folder / name).stat().st_size
        if "zeroed" in damage:
            _zero_block(folder / name, 0.4)
        if "flipped" in damage:
            _flip_bits(folder / name, 0.7)
        assert (folder / name).stat().st_size == size
    with caplog.at_level(logging.WARNING, logger="facemask"):
        again, report = _cache(ds, tmp_path)
    assert f"{folder} is damaged" in caplog.text and "rebuilding" in caplog.text
    assert not report.reused and np.array_equal(_pixels(again), expected)
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("damage", ["cut short", "a digit changed"])
def test_damaged_kept_inspections_are_redone(synth_folder, tmp_path, caplog, damage):
    ds = datasets.load_dataset("imagefolder", data_dir=str(synth_folder), split="train")
    ds = ds.cast_column("image", datasets.Image(decode=False))
    first = inspect_splits({"train": ds}, "image", 8, 32, str(tmp_path))["train"]
    [kept] = tmp_path.glob("audit-*.json")
    text = kept.read_text()
    if damage == "cut short":
        kept.write_text(text[: len(text) // 2])
    else:  # one flipped bit turns a digit of a sharpness into another: still valid JSON, of the same size
        at = text.index('"sharpness": ') + len('"sharpness": ')
        kept.write_text(text[:at] + chr(ord(text[at]) ^ 1) + text[at + 1:])
    with caplog.at_level(logging.WARNING, logger="facemask"):
        again = inspect_splits({"train": ds}, "image", 8, 32, str(tmp_path))["train"]
    assert f"{kept} is damaged" in caplog.text
    assert [(f.sha256, f.sharpness) for f in again] == [(f.sha256, f.sharpness) for f in first]
    assert len(json.loads(read_checked(kept))) == len(ds)  # kept again, whole


@pytest.mark.parametrize("damage", ["cut short", "zeroed block", "flipped bits"])
def test_a_damaged_drawn_set_is_drawn_again(tmp_path, caplog, damage):
    first = stored_synthetic_dataset(30, 32, 5, tmp_path)
    [folder] = [p for p in tmp_path.iterdir() if p.name.startswith("synthetic-")]
    for arrow in folder.glob("*.arrow"):
        if damage == "cut short":
            arrow.write_bytes(arrow.read_bytes()[:200])
        elif damage == "zeroed block":
            _zero_block(arrow, 0.5)  # inside an image's PNG bytes
        else:
            _flip_bits(arrow, 0.5)
    with caplog.at_level(logging.WARNING, logger="facemask"):
        again = stored_synthetic_dataset(30, 32, 5, tmp_path)
    assert f"{folder} is damaged" in caplog.text
    fresh = synthetic_dataset(30, 32, 5)
    assert again["label"] == first["label"] == fresh["label"]
    stored = datasets.load_from_disk(str(folder))  # stored again, whole: the images a fresh draw makes
    images = [stored.cast_column("image", datasets.Image(decode=False))["image"],
              fresh.cast_column("image", datasets.Image(decode=False))["image"]]
    assert [item["bytes"] for item in images[0]] == [item["bytes"] for item in images[1]]


def test_what_is_kept_reaches_the_disk_before_its_name(tmp_path, monkeypatch):
    """fsync of the written file (and of a folder's files and the folder) before the rename, and of
    the parent folder after it: a crash then leaves the old entry or the whole new one."""
    import facemask.data.storage as storage

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(a, b):
        events.append(("rename", str(b)))
        real_replace(a, b)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", replace)
    final = tmp_path / "kept.json"
    with storage.staged(final) as partial:
        partial.write_text("{}")
        written = str(partial)
    assert events == [("fsync", written), ("rename", str(final)), ("fsync", str(tmp_path))]
    events.clear()
    with storage.staged(tmp_path / "kept", folder=True) as partial:
        (partial / "part.arrow").write_bytes(b"1")
        written = str(partial)
    assert events == [("fsync", f"{written}/part.arrow"), ("fsync", written),
                      ("rename", str(tmp_path / "kept")), ("fsync", str(tmp_path))]


def _dead_pid():
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_partials_of_dead_processes_of_this_host_are_removed_and_no_others(tmp_path, caplog):
    host, dead = HOST, _dead_pid()
    names = {"dead": f".train-37px-abc.{host}.{dead}.0a1b2c3d.partial",
             "dead file": f".audit-abc.json.{host}.{dead}.99aa00ff.partial",
             "alive": f".eval-32px-abc.{host}.{os.getpid()}.0a1b2c3d.partial",
             "other host": f".train-37px-abc.another-node.{dead}.0a1b2c3d.partial",
             "host ending like ours": f".train-37px-abc.gpu-{host}.{dead}.0a1b2c3d.partial",  # host gpu.<ours>
             "not ours": "train-37px-abc", "user file": "notes.partial"}
    for key, name in names.items():
        (tmp_path / name).mkdir() if key != "dead file" else (tmp_path / name).write_text("{")
    with caplog.at_level(logging.INFO, logger="facemask"):
        removed = remove_stale_partials(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["dead file"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in ("alive", "other host", "host ending like ours", "not ours", "user file"))
    assert f"process {dead} of this host, which is no longer running" in caplog.text


def test_a_run_starts_by_removing_what_a_killed_run_left(tmp_path):
    cache = tmp_path / "cache"
    stale = cache / f".train-37px-abc.{HOST}.{_dead_pid()}.0a1b2c3d.partial"
    stale.mkdir(parents=True)
    (stale / "pixels.arrow").write_bytes(b"\0" * 1000)
    train.main([str(tiny_config(tmp_path)), f"data.preprocess_dir={cache}"])
    assert not stale.exists() and any(cache.glob("train-*"))


def _lock_of(tmp_path, host, pid, **more):
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.lock").write_text(json.dumps({"host": host, "pid": pid, "started": "2026-11-29T10:00:00+00:00",
                                              "command": "train.py earlier.yaml", **more}))
    return out


def test_a_second_run_into_a_folder_in_use_stops_and_names_the_first(tmp_path):
    config = tiny_config(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, '.')\n"
        "from pathlib import Path\n"
        "from facemask.training.resume import RunLock\n"
        f"lock = RunLock(Path({str(tmp_path / 'out')!r})).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"is in use by another run \(process {holder.pid} on "
                                              rf"{re.escape(socket.gethostname())}, started .*\): wait for it"):
            train.main([str(config), "--overwrite"])
        assert (tmp_path / "out" / "run.lock").is_file()  # the first run's lock, untouched
    finally:
        holder.kill()
        holder.wait()
    # Killed, its process holds nothing: the next run takes the lock over, says so, and runs.
    train.main([str(config)])
    assert (tmp_path / "out" / "train_results.json").is_file() and not (tmp_path / "out" / "run.lock").exists()


@pytest.mark.parametrize("host, pid", [("this", "dead"), ("this", "reused"), ("another-node", 4242)])
def test_a_lock_whose_run_is_over_is_taken_over_naming_its_writer(tmp_path, caplog, monkeypatch, host, pid):
    # A dead run of this host; a dead run's PID since given to a live process started later (the
    # record keeps its PID's start time); a run on another node (a SLURM requeue elsewhere) whose
    # heartbeat stopped an hour ago. A free flock alone proves nothing: on another host's record
    # the heartbeat decides (tests/test_locks.py: a live one is never taken over).
    from facemask.training import resume

    monkeypatch.setattr(resume, "HEARTBEAT_S", 0.1)
    kind, pid = pid, {"dead": _dead_pid(), "reused": os.getppid()}.get(pid, pid)
    # The reused PID's record names a start time its process does not have (it started later).
    out = _lock_of(tmp_path, socket.gethostname() if host == "this" else host, pid,
                   **({"pid_start": 1} if kind == "reused" else {}), **({} if host == "this" else {"heartbeat_s": 0.1}))
    if host != "this":
        os.utime(out / "run.lock", (time.time() - 3600, time.time() - 3600))
    with caplog.at_level(logging.WARNING, logger="facemask"):
        train.main([str(tiny_config(tmp_path))])
    assert f"taking over {out / 'run.lock'}" in caplog.text and f"process {pid} on" in caplog.text
    assert "train.py earlier.yaml" in caplog.text
    assert {"dead": f"process {pid} of this host is no longer running",
            "reused": f"process {pid} of this host whose PID now belongs to another process",
            4242: "the run on host another-node"}[kind] in caplog.text
    if host != "this":
        assert re.search(r"has not refreshed its heartbeat for 36\d\d s", caplog.text)
    assert (out / "train_results.json").is_file() and not (out / "run.lock").exists()


def test_without_flock_the_lock_record_decides(tmp_path, monkeypatch, caplog):
    import errno

    from facemask.training import resume

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(resume.fcntl, "flock", no_flock)
    monkeypatch.setattr(resume, "HEARTBEAT_S", 0.1)
    out = _lock_of(tmp_path, socket.gethostname(), os.getppid())  # a live process of this host
    with pytest.raises(ConfigError, match=rf"in use by another run of this host \(process {os.getppid()} on"):
        train.main([str(tiny_config(tmp_path))])
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
    # Another host's run: its heartbeat (the record's mtime) decides, stale here.
    # A record of a version without a heartbeat: its mtime says nothing, so only --force takes it.
    _lock_of(tmp_path, "another-node", 4242)
    os.utime(out / "run.lock", (time.time() - 600, time.time() - 600))
    with pytest.raises(ConfigError, match="record has no heartbeat .*pass --force"):
        train.main([str(tiny_config(tmp_path))])
    _lock_of(tmp_path, "another-node", 4242, heartbeat_s=0.1)
    os.utime(out / "run.lock", (time.time() - 600, time.time() - 600))
    with caplog.at_level(logging.WARNING, logger="facemask"):
        train.main([str(tiny_config(tmp_path))])
    assert "the run on host another-node (process 4242 on another-node" in caplog.text
    assert (out / "train_results.json").is_file() and not (out / "run.lock").exists()


def test_cache_list_and_clear_touch_only_what_the_project_keeps(tmp_path, synth_folder, capsys):
    from facemask.__main__ import main

    root = tmp_path / "kept"
    ds = synthetic_dataset(24, 40, 3).cast_column("image", datasets.Image(decode=False))
    _cache(ds, root)
    folder = datasets.load_dataset("imagefolder", data_dir=str(synth_folder), split="train")
    inspect_splits({"train": folder.cast_column("image", datasets.Image(decode=False))}, "image", 8, 32, str(root))
    stored_synthetic_dataset(30, 32, 5, root)
    (root / "notes.txt").write_text("mine")
    live = root / f".train-37px-abc.{HOST}.{os.getpid()}.0a1b2c3d.partial"
    live.mkdir()
    assert main(["cache", "list", "--cache-dir", str(root)]) == 0
    listed = capsys.readouterr().out
    for kind, images in (("preprocessing cache", "24"), ("audit inspections", "40"), ("drawn set", "30")):
        assert any(line.startswith(kind) and f" {images} " in line for line in listed.splitlines()), (kind, listed)
    assert "unfinished write" in listed and "notes.txt" not in listed
    # Used again now, the drawn set stays; the others were last used 40 days ago.
    old = time.time() - 40 * 24 * 3600
    for marker in [*root.glob("eval-*/cache.json"), *root.glob("audit-*.json")]:
        os.utime(marker, (old, old))
    stored_synthetic_dataset(30, 32, 5, root)
    assert main(["cache", "clear", "--older-than", "30", "--cache-dir", str(root)]) == 0
    assert not list(root.glob("eval-*")) and not list(root.glob("audit-*")) and list(root.glob("synthetic-*"))
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert sorted(p.name for p in root.iterdir()) == sorted(["notes.txt", live.name])  # not ours, or still live


def test_a_cache_that_the_disk_cannot_hold_stops_before_any_work(tmp_path, monkeypatch):
    import facemask.data.storage as storage

    real = storage.shutil.disk_usage
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: real(path)._replace(free=50_000))
    config = tiny_config(tmp_path)
    with pytest.raises(ConfigError, match=r"preprocessing cache of the train split \(40 images at 37 px\) needs "
                                          r"about 1\.2 MB in .*, whose disk has 0\.1 MB free: .*data\.preprocess_dir"):
        train.main([str(config), f"data.preprocess_dir={tmp_path / 'cache'}"])
    assert not list((tmp_path / "cache").glob("train-*")) and not (tmp_path / "out" / "trainer_state.json").exists()


def test_a_checkpoint_the_disk_cannot_hold_stops_before_training(tmp_path, monkeypatch):
    import facemask.data.storage as storage

    real = storage.shutil.disk_usage
    config = tiny_config(tmp_path, training={"save_strategy": "steps", "save_steps": 1})
    # Room for the caches (a few hundred kB), not for a checkpoint of the tiny model (~1.3 MB).
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: real(path)._replace(free=1_200_000))
    with pytest.raises(ConfigError, match=r"a checkpoint needs about .* in .*out, whose disk has 1\.2 MB free"):
        train.main([str(config)])
    assert not list((tmp_path / "out").glob("checkpoint-*"))


@pytest.mark.parametrize("failure", ["OSError", "RuntimeError"])
def test_a_failed_checkpoint_save_leaves_the_previous_one_to_resume_from(tmp_path, monkeypatch, failure):
    import errno

    from facemask.training.trainer import CheckpointError, FaceMaskTrainer

    config = tiny_config(tmp_path, training={"max_steps": 3, "save_strategy": "steps", "save_steps": 1})
    real, saves = FaceMaskTrainer._save_optimizer_and_scheduler, []

    def full_disk(self, output_dir):
        saves.append(output_dir)
        if len(saves) == 2:  # the second checkpoint: its weights are written, then the disk is full
            if failure == "OSError":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")  # torch.save
        return real(self, output_dir)

    monkeypatch.setattr(FaceMaskTrainer, "_save_optimizer_and_scheduler", full_disk)
    with pytest.raises(CheckpointError, match=r"checkpoint-2 failed \((No space left on device|RuntimeError: .*)\); "
                                              r".*checkpoint-1 is intact: free some space, then continue with --resume"):
        train.main([str(config)])
    out = tmp_path / "out"
    assert (out / "checkpoint-1" / "trainer_state.json").is_file() and not (out / "checkpoint-2").exists()
    monkeypatch.setattr(FaceMaskTrainer, "_save_optimizer_and_scheduler", real)
    train.main([str(config), "--resume"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and (out / "train_results.json").is_file()


def test_public_text_names_whole_folders_only_in_either_spelling():
    from facemask.publish.public import public_text

    folders = {"/data": "data", "/srv/jos\u00e9/masks": "masks"}
    assert public_text("/data/a.jpg and /mnt/data/b.jpg", folders) == "data/a.jpg and /mnt/data/b.jpg"
    assert public_text('{"file": "/srv/jos\\u00e9/masks/c.jpg"}', folders) == '{"file": "masks/c.jpg"}'
    assert public_text("from /srv/jos\u00e9/masks.", folders) == "from masks."


def test_a_run_set_up_reads_each_image_once_for_its_digests(tmp_path, monkeypatch):
    """The audit's key, the preprocessing caches' keys and run_info.json's fingerprint all come from
    one read of each image (data preparation's digests), and they are the digests of the splits."""
    import facemask.data.storage as storage
    from facemask.config.loading import load_config
    from facemask.training.provenance import run_info
    from facemask.training.setup import RunSetup

    rows_read = []
    reader = storage.stored_images

    def counted(ds, image_column):
        for chunk in reader(ds, image_column):
            rows_read.append(len(chunk))
            yield chunk

    data = {"synthetic": True, "synthetic_num_images": 60, "synthetic_image_size": 40, "test_split": 0.2,
            "validation_split": 0.2, "preprocess_dir": str(tmp_path / "cache")}
    cfg = load_config(str(tiny_config(tmp_path, data=data)))
    run = RunSetup.start(cfg)
    monkeypatch.setattr(storage, "stored_images", counted)
    prepared = run.load_data()
    info = run_info([], prepared.data, run.args, cfg)
    run.build()
    monkeypatch.setattr(storage, "stored_images", reader)
    assert sum(rows_read) == 60
    splits = prepared.data.splits
    assert set(splits) == {"train", "validation", "test"} and len(run.pipeline.cache_reports) == 3
    assert sum(len(ds) for ds in splits.values()) == info["data_fingerprint"]["images"] == 60
    for split, ds in splits.items():  # the carried digests are those of the carved splits
        assert prepared.data.digests[split] == storage.images_digest(ds, "image")
