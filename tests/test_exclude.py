"""Exclude lists (data.exclude): the list format, and training without the listed images."""

import hashlib
import shutil

import pytest
from PIL import Image

from facemask.config.schema import ConfigError
from facemask.data.exclude import apply_exclusion, read_exclude_list, write_exclude_list
from facemask.data.inspection import inspect_image
from facemask.data.synthetic import sample


def _image(path, index):
    path.parent.mkdir(parents=True, exist_ok=True)
    sample(5, index, 32)[0].save(path, format="PNG")
    return path


def test_a_written_list_reads_back_and_digests_are_the_audits(tmp_path):
    a, b = _image(tmp_path / "imgs" / "a.png", 0), _image(tmp_path / "imgs" / "b.png", 1)
    audit = {p: inspect_image({"path": str(p), "bytes": None}, 8).sha256 for p in (a, b)}
    assert audit[a] == hashlib.sha256(a.read_bytes()).hexdigest()
    drawn = hashlib.sha256(b"held in a dataset").hexdigest()
    lists = tmp_path / "lists"
    lists.mkdir()
    written = write_exclude_list(lists / "exclude.txt", [(str(a), audit[a]), (None, drawn.upper())],
                                 header="flagged by label-issues\nK = 5")
    text = written.read_text(encoding="utf-8")
    assert text.splitlines() == ["# flagged by label-issues", "# K = 5", f"{a.resolve()}\tsha256:{audit[a]}",
                                 f"sha256:{drawn}"]
    found = read_exclude_list(written)
    assert found.name == "exclude.txt" and found.digests == {audit[a], drawn} and found.not_found == 0
    assert [(e.line, e.path, e.sha256) for e in found.entries] == [(3, str(a.resolve()), audit[a]), (4, None, drawn)]

    # Hand-written: bare paths relative to the list's folder are read for their digest; a missing
    # one without a digest is counted, one with a digest still matches by it; CRLF and blanks are fine.
    a.rename(tmp_path / "imgs" / "moved.png")
    hand = lists / "hand.txt"
    hand.write_bytes(("\ufeff# mine\r\n\r\n../imgs/b.png\r\n../imgs/a.png\r\n"
                      f"../imgs/a.png\tsha256:{audit[a]}\r\n").encode("utf-8"))
    found = read_exclude_list(hand)
    assert found.digests == {audit[a], audit[b]} and found.not_found == 1 and len(found.entries) == 3
    assert [e.sha256 for e in found.entries] == [audit[b], None, audit[a]]

    with pytest.raises(ValueError, match="not a SHA-256"):
        write_exclude_list(lists / "bad.txt", [(str(b), "abc")])


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("folder", "is a folder"),
    ("png", r"not a text list \(it holds NUL bytes: an image"),
    (b"a.png\ncaf\xe9.png\n", r"not a text list \(byte 9 is not UTF-8"),
    (b"# ok\na.png\nsha256:1234\n", "line 3: 'sha256:1234' is not a digest"),
    (b"a.png\tmd5:00\n", "line 1: after the tab comes the file's digest"),
])
def test_a_bad_list_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "exclude.txt"
    if content == "folder":
        path.mkdir()
    elif content == "png":
        _image(path, 0)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_exclude_list(path)
    assert str(path) in str(err.value) and "data.exclude" in str(err.value)


def test_listed_images_leave_the_training_splits_and_evaluation_ones_only_when_asked(tmp_path):
    digests = [f"{k:064x}" for k in range(8)] + [None]
    members = {"train": [0, 1, 2, 8], "validation": [3, 4], "test": [5, 6], "extra": [7]}
    path = tmp_path / "x.txt"
    path.write_text("".join(f"sha256:{digests[k]}\n" for k in (1, 3, 5, 7)) + f"sha256:{'f' * 64}\nnone.png\n")
    listed = read_exclude_list(path)
    kept, record = apply_exclusion(listed, members, digests, ("train", "validation"), drop_evaluation=False)
    assert kept == {"train": [0, 2, 8], "validation": [4], "test": [5, 6], "extra": [7]}
    assert record == {"list": "x.txt", "lines": 6, "images_listed": 5, "excluded": {"train": 1, "validation": 1},
                      "kept_in_evaluation": {"test": 1, "extra": 1}, "evaluation_cleaned": False,
                      "not_found": 1, "unmatched": 1}
    kept, record = apply_exclusion(listed, members, digests, ("train", "validation"), drop_evaluation=True)
    assert kept == {"train": [0, 2, 8], "validation": [4], "test": [6], "extra": []}
    assert record["excluded"] == {"train": 1, "validation": 1, "test": 1, "extra": 1}
    assert record["kept_in_evaluation"] == {} and record["evaluation_cleaned"]
    # A copy of a listed image is the listed image.
    shutil.copy(path, tmp_path / "y.txt")
    digests[0] = digests[1]
    kept, _ = apply_exclusion(read_exclude_list(tmp_path / "y.txt"), members, digests, ("train",), False)
    assert kept["train"] == [2, 8]


def _files(ds):
    return sorted(item["path"] for item in ds["image"])


def test_a_messy_folder_drops_listed_images_by_content_after_carving(tmp_path):
    from test_messy import draw, near_copy

    from facemask.config.schema import DataConfig
    from facemask.data.prepare import prepare_data

    train_dir, test_dir = tmp_path / "Train", tmp_path / "Test"
    draw(train_dir / "with_mask", "with_mask", 10, seed=21)
    pngs = draw(train_dir / "with_mask", "with_mask", 6, seed=23, fmt="png")  # PNG only in one class
    without = draw(train_dir / "without_mask", "without_mask", 16, seed=21)
    tests = {label: draw(test_dir / label, label, 6, seed=22) for label in ("with_mask", "without_mask")}
    shutil.copy(tests["with_mask"][0], train_dir / "with_mask" / "leak.jpg")  # a copy of a test image
    near_copy(without[0], train_dir / "without_mask" / "near.jpg")
    cfg = DataConfig(train_dir=str(train_dir), test_dir=str(test_dir), validation_split=0.25, test_split=0.0)
    before = prepare_data(cfg, seed=0, image_side=32)

    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (without[3], pngs[0])}
    lists = tmp_path / "lists"
    lists.mkdir()
    write_exclude_list(lists / "flagged.txt", [(str(without[3]), digest[without[3]])], header="test")
    with (lists / "flagged.txt").open("a", encoding="utf-8") as handle:
        handle.write(f"../Train/with_mask/{pngs[0].name}\n../Train/gone.jpg\n../Test/without_mask/"
                     f"{tests['without_mask'][1].name}\n")
    listed = read_exclude_list(lists / "flagged.txt")
    moved = without[3].rename(train_dir / "without_mask" / "renamed.jpg")  # moved after it was listed

    after = prepare_data(DataConfig(**{**cfg.__dict__, "exclude": str(lists / "flagged.txt")}), seed=0,
                         image_side=32, exclude=listed)
    record = after.data.exclusion
    assert record["list"] == "flagged.txt" and record["lines"] == 4 and record["not_found"] == 1
    assert sum(record["excluded"].values()) == 2 and record["kept_in_evaluation"] == {"test": 1}
    assert after.report["exclude"] == record
    training = {p for name in ("train", "validation") for p in _files(after.data.splits[name])}
    assert str(moved) not in training and str(pngs[0]) not in training
    was = {p for name in ("train", "validation") for p in _files(before.data.splits[name])}
    assert was - training == {str(without[3]), str(pngs[0])} and training - was == set()
    assert str(train_dir / "with_mask" / "leak.jpg") not in training  # the leak is still dropped
    assert _files(after.data.splits["test"]) == _files(before.data.splits["test"])

    cleaned = prepare_data(DataConfig(**{**cfg.__dict__, "exclude": str(lists / "flagged.txt"), "exclude_test": True}),
                           seed=0, image_side=32, exclude=listed)
    assert set(_files(before.data.splits["test"])) - set(_files(cleaned.data.splits["test"])) == {
        str(tests["without_mask"][1])}
    assert cleaned.data.exclusion["excluded"]["test"] == 1 and cleaned.data.exclusion["evaluation_cleaned"]


def test_a_hub_style_dataset_folder_matches_sha256_lines(tmp_path):
    import datasets

    from facemask.config.schema import DataConfig
    from facemask.data.prepare import prepare_data

    encoded = []
    for k in range(24):
        path = _image(tmp_path / "drawn" / f"{k}.png", k)
        encoded.append({"bytes": path.read_bytes(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["with_mask",
                                                                                               "without_mask"])})
    root = tmp_path / "hubstyle"
    for split, rows in (("train", range(16)), ("test", range(16, 24))):
        (root / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict({"image": [encoded[k] for k in rows], "label": [k % 2 for k in rows]},
                                   features=features).to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    listed = [hashlib.sha256(encoded[k]["bytes"]).hexdigest() for k in (2, 5, 20)]
    write_exclude_list(tmp_path / "x.txt", [(None, d) for d in listed], header="drawn")
    cfg = DataConfig(dataset_name=str(root), validation_split=0.25, exclude=str(tmp_path / "x.txt"))
    prepared = prepare_data(cfg, seed=0, image_side=32)
    record = prepared.data.exclusion
    assert sum(record["excluded"].values()) == 2 and record["kept_in_evaluation"] == {"test": 1}
    assert len(prepared.data.splits["train"]) + len(prepared.data.splits["validation"]) == 14
    left = {f.sha256 for name in ("train", "validation") for f in prepared.inspections[name]}
    assert not left & set(listed) and listed[2] in {f.sha256 for f in prepared.inspections["test"]}


def test_training_on_the_drawn_set_without_listed_images_keeps_the_carved_test_split(tmp_path):
    import json

    from conftest import tiny_config

    import train
    from facemask.config.schema import DataConfig
    from facemask.data.prepare import prepare_data

    data = {"synthetic": True, "synthetic_num_images": 40, "synthetic_image_size": 32, "test_split": 0.25}
    training = {"max_steps": 1}
    train.main([str(tiny_config(tmp_path / "noisy", data=data, training=training))])
    # The drawn images' digests as the audit takes them: 3 training images and 1 carved test image.
    prepared = prepare_data(DataConfig(**data), seed=0, image_side=32)
    listed = [f.sha256 for f in prepared.inspections["train"][:3]] + [prepared.inspections["test"][0].sha256]
    local = tmp_path / "my" / "lists"
    local.mkdir(parents=True)
    write_exclude_list(local / "flagged.txt", [(None, d) for d in listed], header="drawn")
    runs = {"noisy": tmp_path / "noisy" / "out"}
    for name, extra in (("cleaned", {}), ("cleaned_test", {"exclude_test": True})):
        train.main([str(tiny_config(tmp_path / name, data={**data, "exclude": str(local / "flagged.txt"), **extra},
                                    training=training))])
        runs[name] = tmp_path / name / "out"
    info = {name: json.loads((out / "run_info.json").read_text()) for name, out in runs.items()}
    splits = {name: i["data"]["splits"] for name, i in info.items()}
    assert splits["cleaned"]["test"]["content_sha256"] == splits["noisy"]["test"]["content_sha256"]
    assert splits["cleaned"]["train"]["num_images"] == splits["noisy"]["train"]["num_images"] - 3
    assert splits["cleaned_test"]["test"]["num_images"] == splits["noisy"]["test"]["num_images"] - 1
    assert splits["cleaned_test"]["test"]["content_sha256"] != splits["noisy"]["test"]["content_sha256"]
    record = info["cleaned"]["data"]["exclude"]
    assert record == {"list": "flagged.txt", "lines": 4, "images_listed": 4, "excluded": {"train": 3, "validation": 0},
                      "kept_in_evaluation": {"test": 1}, "evaluation_cleaned": False, "not_found": 0,
                      "unmatched": 0}
    assert "exclude" not in info["noisy"]["data"]
    card = (runs["cleaned"] / "README.md").read_text()
    assert "- Left out by the exclude list `flagged.txt` (4 lines, 4 images): 3 images (train 3, validation 0);" in card
    assert "names 1 evaluation images (test 1): they were kept" in card and "cleaned by" not in card
    card = (runs["cleaned_test"] / "README.md").read_text()
    assert "**The test figures are measured on test sets cleaned by `flagged.txt`: a different figure" in card
    assert str(local) not in card and str(tmp_path) not in card
    # The pushed experiment.yaml names the list by its file name too.
    from facemask.publish.public import local_folders, public_text
    from facemask.run_folder import read_run

    run = read_run(runs["cleaned"])
    published = public_text((runs["cleaned"] / "experiment.yaml").read_text(), local_folders(run))
    assert "exclude: flagged.txt" in published and str(local) not in published


@pytest.mark.parametrize("lines, message", [
    (None, "does not exist"),
    (f"sha256:{'0' * 64}\nsha256:{'g' * 64}\n", "line 2: 'sha256:ggg"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "is not a text list"),
])
def test_a_bad_list_stops_train_py_before_its_run_folder_is_touched(tmp_path, lines, message):
    from conftest import tiny_config

    import train

    path = tmp_path / "exclude.txt"
    if isinstance(lines, str):
        path.write_text(lines)
    elif lines is not None:
        path.write_bytes(lines)
    with pytest.raises(ConfigError, match=message):
        train.main([str(tiny_config(tmp_path)), f"data.exclude={path}"])
    assert not (tmp_path / "out").exists()


def test_exclude_needs_the_audit_and_exclude_test_needs_a_list(tmp_path):
    from conftest import tiny_config

    from facemask.config.loading import load_config

    config = str(tiny_config(tmp_path))
    with pytest.raises(ConfigError, match=r"'data.exclude' needs the audit.*data.audit=true"):
        load_config(config, [f"data.exclude={tmp_path / 'x.txt'}", "data.audit=false"])
    with pytest.raises(ConfigError, match="'data.exclude_test' is true but 'data.exclude' names no list"):
        load_config(config, ["data.exclude_test=true"])
