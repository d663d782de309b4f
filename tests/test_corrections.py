"""Corrections files (data.corrections): the CSV format, relabelling by content, new images joining
train after the carving, and what a run records."""

import hashlib
import os
import shutil

import pytest

from facemask.config.schema import ConfigError, DataConfig
from facemask.data.corrections import COLUMNS, Correction, read_corrections, write_corrections

CLASSES = ("with_mask", "without_mask")


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(ds):
    return [item["path"] for item in ds["image"]]


def _labels(prepared, split):
    ds = prepared.data.splits[split]
    return {path: prepared.data.labels[label] for path, label in zip(_files(ds), ds[prepared.data.label_column])}


def _csv(path, rows, header=",".join(COLUMNS)):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in [header, *rows]), encoding="utf-8")
    return path


def test_a_written_file_reads_back_and_is_replaced_whole(tmp_path):
    rows = [Correction(0, "with_mask/a.jpg", "A" * 64, "with_mask", "without_mask"),
            Correction(0, "/pool/x, y.png", "b" * 64, None, "with_mask")]
    path = write_corrections(tmp_path / "corrections.csv", rows)
    assert path.read_text(encoding="utf-8").splitlines() == [
        "file,sha256,given_label,label", f"with_mask/a.jpg,{'a' * 64},with_mask,without_mask",
        f'"/pool/x, y.png",{"b" * 64},,with_mask']
    found = read_corrections(path)
    assert found.name == "corrections.csv" and found.path == path
    assert found.rows == (Correction(2, "with_mask/a.jpg", "a" * 64, "with_mask", "without_mask"),
                          Correction(3, "/pool/x, y.png", "b" * 64, None, "with_mask"))
    # Columns in another order, extra columns, CRLF, a BOM, blank lines, an upper-case digest: all read.
    hand = tmp_path / "hand.csv"
    hand.write_bytes(("\ufefflabel,note,sha256,file,given_label\r\n\r\nwith_mask,sure,"
                      f"sha256:{'C' * 64},c.png,\r\n").encode("utf-8"))
    assert read_corrections(hand).rows == (Correction(3, "c.png", "c" * 64, None, "with_mask"),)

    # A rewrite replaces the file whole, through a temporary file that never stays behind; one
    # that cannot be written leaves the earlier file as it was.
    write_corrections(path, rows[:1])
    assert len(read_corrections(path).rows) == 1
    before = path.read_bytes()
    with pytest.raises(ValueError, match="two labels for one image"):
        write_corrections(path, [rows[0], Correction(0, "elsewhere.jpg", "a" * 64, None, "with_mask")])
    with pytest.raises(ValueError, match="not a SHA-256"):
        write_corrections(path, [Correction(0, "a.jpg", "abc", None, "with_mask")])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "corrections.csv", "hand.csv"]


def test_a_write_is_atomic(tmp_path, monkeypatch):
    """The new content reaches its name by a rename only: a crash mid-write leaves the old file."""
    path = write_corrections(tmp_path / "corrections.csv", [Correction(0, "a.jpg", "a" * 64, None, "with_mask")])
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_corrections(path, [Correction(0, "b.jpg", "b" * 64, None, "without_mask")])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["corrections.csv"]


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("folder", "is a folder"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", r"not a CSV \(it holds NUL bytes"),
    (b"file,sha256,given_label,label\ncaf\xe9.png,x,,y\n", r"not a CSV \(byte 33 is not UTF-8"),
    (b"", "is empty"),
    (b"file,sha,given_label,labels\n", r"line 1: no column 'sha256', 'label' \(rename 'sha' -> 'sha256', "
                                       r"'labels' -> 'label'\).*file,sha256,given_label,label \(fixed names\)"),
    (f"file,sha256,given_label,label\na.jpg,{'0' * 64},,with_mask\nb.jpg,{'0' * 63},,with_mask\n".encode(),
     "line 3: sha256 '0{63}' is not a digest"),
    (f"file,sha256,given_label,label\na.jpg,{'0' * 64},with_mask,\n".encode(), "line 2: the label is empty"),
    (f"file,sha256,given_label,label\na.jpg,{'0' * 64},,with_mask\nb.jpg,{'1' * 64},,x\n"
     f"c.jpg,{'0' * 64},,without_mask\n".encode(),
     "line 4: the image 000000000000... is labelled 'without_mask' here and 'with_mask' on line 2"),
    (f"file,sha256,given_label,label\na.jpg,{'0' * 64}\n".encode(), "line 2: 2 fields where the header has 4"),
])
def test_a_bad_file_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "corrections.csv"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        read_corrections(path)
    assert str(path) in str(err.value) and "data.corrections" in str(err.value)


@pytest.fixture
def folders(tmp_path):
    """A training folder (validation and test carved from it), a test folder, and a pool of images
    from elsewhere."""
    from test_messy import draw

    train_dir, test_dir, pool = tmp_path / "Train", tmp_path / "Test", tmp_path / "pool"
    images = {label: draw(train_dir / label, label, 12, seed=31) for label in CLASSES}
    tests = {label: draw(test_dir / label, label, 4, seed=32) for label in CLASSES}
    new = draw(pool, "with_mask", 3, seed=33) + draw(pool, "without_mask", 3, seed=33)
    cfg = DataConfig(train_dir=str(train_dir), test_dir=str(test_dir), validation_split=0.25, test_split=0.0)
    return cfg, images, tests, new


def _prepare(cfg, corrections=None, **changes):
    from facemask.data.prepare import prepare_data

    extra = {"corrections": str(corrections)} if corrections is not None else {}
    return prepare_data(DataConfig(**{**cfg.__dict__, **extra, **changes}), seed=0, image_side=32)


def test_labels_change_by_content_on_the_training_side_only(tmp_path, folders):
    cfg, images, tests, _ = folders
    before = _prepare(cfg)
    train, validation = _labels(before, "train"), _labels(before, "validation")
    moved = next(p for p in images["with_mask"] if str(p) in train)  # a train image, renamed after the review
    confirmed = next(p for p in images["without_mask"] if str(p) in train)
    checked = next(p for p in images["with_mask"] if str(p) in validation)
    test_image = tests["without_mask"][0]
    rows = [f"with_mask/{moved.name},{_sha(moved)},with_mask,without_mask",
            f"without_mask/{confirmed.name},{_sha(confirmed)},without_mask,Without Mask",
            f"with_mask/{checked.name},{_sha(checked)},with_mask,without_mask",
            f"{test_image},{_sha(test_image)},without_mask,with_mask",
            f"with_mask/gone.jpg,{'e' * 64},with_mask,without_mask"]  # an image no longer in the data
    path = _csv(tmp_path / "review" / "corrections.csv", rows)
    renamed = moved.rename(moved.with_name("renamed.jpg"))
    before = _prepare(cfg)  # the renamed file: the same data otherwise

    after = _prepare(cfg, path)
    assert _labels(after, "train")[str(renamed)] == "without_mask"
    assert _labels(after, "validation")[str(checked)] == "without_mask"
    assert _labels(after, "test")[str(test_image)] == "without_mask"  # evaluation labels stay as given
    changed = {split: {p for p, label in _labels(after, split).items() if label != _labels(before, split)[p]}
               for split in ("train", "validation", "test")}
    assert changed == {"train": {str(renamed)}, "validation": {str(checked)}, "test": set()}
    # The carving stratifies by the given labels: the same held-out images with the file and without.
    for split in ("train", "validation", "test"):
        assert _files(after.data.splits[split]) == _files(before.data.splits[split])
    record = after.data.corrections
    assert record == {"file": "corrections.csv", "rows": 5, "sha256": read_corrections(path).digest,
                      "relabelled": {"train": 1, "validation": 1}, "confirmed": {"train": 1, "validation": 0},
                      "added": 0, "not_added": 0, "kept_in_evaluation": {"test": 1}, "unmatched": 1,
                      "given_label_differs": 0}
    assert after.report["corrections"] == record
    # The audit judges the labels training reads.
    assert after.report["splits"]["train"]["class_counts"]["without_mask"] == \
        before.report["splits"]["train"]["class_counts"]["without_mask"] + 1

    with pytest.raises(ConfigError, match=r"line 2: 'mask' is not a class of this data \(its classes: "
                                          r"with_mask, without_mask\)"):
        _prepare(cfg, _csv(tmp_path / "bad.csv", [f"a.jpg,{_sha(confirmed)},,mask"]))
    with pytest.raises(ConfigError, match="'data.corrections' needs the audit"):
        _prepare(cfg, path, audit=False)


def test_new_images_join_train_after_the_carving_and_copies_of_held_out_images_do_not(tmp_path, folders):
    from test_messy import near_copy

    cfg, images, tests, new = folders
    before = _prepare(cfg)
    held_out = next(p for p in images["without_mask"] if str(p) in _labels(before, "validation"))
    leak = shutil.copy(tests["with_mask"][1], tmp_path / "pool" / "test_copy.jpg")  # an exact copy of a test image
    near = near_copy(held_out, tmp_path / "pool" / "near_validation.jpg")  # a near copy of a carved one
    rows = [f"{p},{_sha(p)},,{p.name.split('_3')[0]}" for p in new]
    rows += [f"{leak},{_sha(leak)},,with_mask", f"{near},{_sha(near)},,without_mask",
             f"pool/{new[0].name},{_sha(new[0])},,with_mask"]  # relative to the CSV's folder: one image twice
    path = _csv(tmp_path / "corrections.csv", rows)

    after = _prepare(cfg, path)
    for split in ("validation", "test"):
        assert _files(after.data.splits[split]) == _files(before.data.splits[split])
        assert after.data.digests[split] == before.data.digests[split]
    assert _labels(after, "train") == {**_labels(before, "train"),
                                       **{str(p): p.name.split("_3")[0] for p in new}}
    assert after.data.digests["train"] != before.data.digests["train"]
    record = after.data.corrections
    # The exact copy has a test image's digest: it is that test image (kept as given), not a new one.
    assert (record["added"], record["not_added"], record["unmatched"]) == (6, 1, 0)
    assert record["kept_in_evaluation"] == {"test": 1} and record["relabelled"] == {"train": 0, "validation": 0}
    assert str(leak) not in _labels(after, "train")
    removed = {entry["file"]: entry["copy_of"]["file"] for entry in after.report["leaks_removed"]["train"]}
    assert removed == {str(near): str(held_out)} and after.report["leaks"] == []
    assert after.removed["train_leaked_images_removed"] == 1

    # on_leak=keep trains on the near copy, and the audit reports the leak.
    kept = _prepare(cfg, path, on_leak="keep")
    assert str(near) in _labels(kept, "train") and kept.data.corrections["not_added"] == 0
    assert [(e["a"]["file"], e["b"]["file"]) for e in kept.report["leaks"]] == [(str(held_out), str(near))]


def test_a_new_image_that_changed_or_went_is_refused(tmp_path, folders):
    from PIL import Image

    cfg, _, _, new = folders
    path = _csv(tmp_path / "corrections.csv", [f"{new[0]},{_sha(new[0])},,with_mask",
                                               f"{new[1]},{_sha(new[1])},,with_mask"])
    Image.open(new[1]).rotate(90).save(new[1])  # edited after it was labelled
    with pytest.raises(ConfigError, match=f"line 3: {new[1]} has changed since it was labelled"):
        _prepare(cfg, path)
    new[1].unlink()
    with pytest.raises(ConfigError, match=f"line 3: the image {new[1]} does not exist, and no image of the data"):
        _prepare(cfg, path)


def test_the_cache_never_serves_old_labels_and_the_fingerprint_tells_the_data_apart(tmp_path, folders):
    from conftest import tiny_config

    from facemask.config.loading import load_config
    from facemask.pipeline.cache import CacheSpec, build_or_load
    from facemask.pipeline.processor import load_image_processor
    from facemask.training.provenance import data_fingerprint

    cfg, images, _, _ = folders
    processor = load_image_processor(load_config(str(tiny_config(tmp_path / "c"))).model)
    spec = CacheSpec.for_split(processor, train=True)
    before = _prepare(cfg)
    train = before.data.splits["train"]
    cached, report = build_or_load(train, "train", "image", "label", spec, processor, tmp_path / "cache",
                                   digest=before.data.images_digest("train"))
    picked = [p for p in images["with_mask"] if str(p) in _labels(before, "train")][:3]
    path = _csv(tmp_path / "corrections.csv", [f"x.jpg,{_sha(p)},with_mask,without_mask" for p in picked])
    after = _prepare(cfg, path)
    assert after.data.images_digest("train") == before.data.images_digest("train")  # the same images
    again, report = build_or_load(after.data.splits["train"], "train", "image", "label", spec, processor,
                                  tmp_path / "cache", digest=after.data.images_digest("train"))
    assert report.reused
    relabelled = [i for i, p in enumerate(_files(train)) if p in {str(q) for q in picked}]
    assert (cached.labels[relabelled] == 0).all() and (again.labels[relabelled] == 1).all()
    assert (again.labels != cached.labels).sum() == 3

    experiment = load_config(str(tiny_config(tmp_path / "c")))
    prints = [data_fingerprint(experiment, prepared.data) for prepared in (before, after)]
    assert prints[0]["images_sha256"] == prints[1]["images_sha256"] and prints[0] != prints[1]
    assert prints[1]["corrections_sha256"] == read_corrections(path).digest


def test_a_training_run_records_and_shows_the_corrections(tmp_path):
    import json

    from conftest import tiny_config

    import train
    from facemask.data.prepare import prepare_data

    data = {"synthetic": True, "synthetic_num_images": 40, "synthetic_image_size": 32, "test_split": 0.25}
    prepared = prepare_data(DataConfig(**data), seed=0, image_side=32)
    flipped = prepared.inspections["train"][:2]
    labels = prepared.data.labels
    was = prepared.data.splits["train"][prepared.data.label_column][:2]
    pool = tmp_path / "pool"
    from test_messy import draw

    new = draw(pool, "with_mask", 2, seed=41, size=32)
    rows = [Correction(0, "", f.sha256, labels[k], labels[1 - k]) for f, k in zip(flipped, was)]
    rows += [Correction(0, str(p), _sha(p), None, "with_mask") for p in new]
    (tmp_path / "review").mkdir()
    path = write_corrections(tmp_path / "review" / "corrections.csv", rows)
    train.main([str(tiny_config(tmp_path / "run", data={**data, "corrections": str(path)},
                                training={"max_steps": 1}))])
    out = tmp_path / "run" / "out"
    info = json.loads((out / "run_info.json").read_text())
    record = info["data"]["corrections"]
    assert record["file"] == "corrections.csv" and record["rows"] == 4 and record["added"] == 2
    assert record["relabelled"] == {"train": 2, "validation": 0} and record["kept_in_evaluation"] == {}
    assert info["data"]["splits"]["train"]["num_images"] == len(prepared.data.splits["train"]) + 2
    assert info["data_fingerprint"]["corrections_sha256"] == record["sha256"]
    card = (out / "README.md").read_text()
    assert "- Labels corrected by `corrections.csv` (4 rows): 2 labels changed (train 2, validation 0), " \
           "0 confirmed, 2 new images added to train; the table below counts the corrected data." in card
    assert str(tmp_path) not in card
    # The pushed experiment.yaml names the file by its name alone.
    from facemask.publish.public import local_folders, public_text
    from facemask.run_folder import read_run

    published = public_text((out / "experiment.yaml").read_text(), local_folders(read_run(out)))
    assert "corrections: corrections.csv" in published and str(tmp_path) not in published


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (f"file,sha256,given_label,label\na.jpg,{'0' * 64},,\n", "line 2: the label is empty"),
    (f"file,sha256,given_label,label\na.jpg,{'0' * 64},,masked\n", "line 2: 'masked' is not a class of this data"),
])
def test_a_bad_file_stops_train_py(tmp_path, content, message):
    from conftest import tiny_config

    import train

    path = tmp_path / "corrections.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        train.main([str(tiny_config(tmp_path)), f"data.corrections={path}"])
    # A file that cannot be read stops before the run folder is touched; a label is checked against
    # the classes once they are known, before any image is inspected.
    assert not (tmp_path / "out" / "run_info.json").exists()
    if "class" not in message:
        assert not (tmp_path / "out").exists()


def test_corrections_need_the_audit(tmp_path):
    from conftest import tiny_config

    from facemask.config.loading import load_config

    with pytest.raises(ConfigError, match=r"'data.corrections' needs the audit.*data.audit=true"):
        load_config(str(tiny_config(tmp_path)), [f"data.corrections={tmp_path / 'c.csv'}", "data.audit=false"])
