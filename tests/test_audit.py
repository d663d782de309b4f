import io
import json
import shutil

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

import train
from facemask.__main__ import main as cli
from facemask.config.schema import ConfigError, DataConfig
from facemask.data.images import load_image
from facemask.data.prepare import prepare_data
from facemask.data.synthetic import sample

BAD = {"notes.jpg": "not_image", "half.jpg": "truncated", "empty.png": "zero_bytes", "huge.png": "decompression_bomb",
       "tiny.png": "too_small"}


def good_images(folder, label, count, seed, fmt="png", size=64):
    folder.mkdir(parents=True, exist_ok=True)
    index = 0 if label == "with_mask" else 1
    for k in range(count):
        image, _ = sample(seed, index + 2 * k, size)
        image.save(folder / f"{label}_{seed}_{k}.{fmt}")


@pytest.fixture
def messy(tmp_path):
    """Good images plus one file of each bad kind, odd colour modes, EXIF rotation and stray files."""
    root = tmp_path / "messy"
    for label in ("with_mask", "without_mask"):
        good_images(root / label, label, 12, seed=1)
    target = root / "with_mask"
    (target / "notes.jpg").write_text("this is not a photo")
    buffer = io.BytesIO()
    sample(2, 0, 64)[0].save(buffer, format="JPEG")
    (target / "half.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (target / "empty.png").write_bytes(b"")
    Image.new("1", (10000, 9000)).save(target / "huge.png")  # 90M pixels, over PIL's 89.5M limit
    Image.new("RGB", (4, 4), (200, 10, 10)).save(target / "tiny.png")
    faces = [sample(3, 2 * k, 64)[0] for k in range(1, 7)]  # different faces: copies would be duplicates
    faces[0].convert("L").save(target / "grey.png")
    faces[1].convert("LA").save(target / "grey_alpha.png")
    faces[2].convert("P").save(target / "palette.png")
    faces[3].convert("RGBA").save(target / "alpha.png")
    faces[4].convert("CMYK").save(target / "cmyk.jpg")
    Image.fromarray((np.asarray(faces[5].convert("L"), dtype=np.uint16) * 257)).convert("I;16").save(
        target / "sixteen.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    sample(3, 2, 64)[0].save(target / "rotated.JPG", exif=exif.tobytes())
    (target / "readme.txt").write_text("collected in 2021")
    (target / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def test_audit_names_each_bad_file_and_counts_the_handled_ones(messy):
    cfg = DataConfig(train_dir=str(messy), validation_split=0.2)
    report = prepare_data(cfg, seed=0).report
    found = {b["file"].rsplit("/", 1)[-1]: b["category"] for b in report["bad_files"]}
    assert found == BAD
    assert report["bad_counts"] == {c: 1 for c in BAD.values()}
    modes = report["non_rgb_modes"]
    assert {"L", "LA", "P", "RGBA", "CMYK"} <= set(modes) and ({"I;16", "I"} & set(modes))
    assert report["exif_rotated"] == 1
    assert [p.rsplit("/", 1)[-1] for p in report["ignored_files"]] == ["readme.txt"]
    assert report["checked_images"] == 24 + len(BAD) + 7
    assert any("unreadable" in e for e in report["errors"])


def test_a_second_audit_of_the_same_images_decodes_nothing(messy, tmp_path, monkeypatch):
    import facemask.data.inspection as inspection

    cfg = DataConfig(train_dir=str(messy), validation_split=0.2, preprocess_dir=str(tmp_path / "cache"))
    first = prepare_data(cfg, seed=0).report
    # One file: the source's train folder, inspected before validation is carved out of it.
    assert len(list((tmp_path / "cache").glob("audit-*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the audit inspected images again")

    monkeypatch.setattr(inspection, "_inspect_splits", no_decoding)
    assert prepare_data(cfg, seed=0).report == first
    cfg.min_image_side = 20  # a setting the inspection depends on: inspected anew
    with pytest.raises(AssertionError, match="inspected images again"):
        prepare_data(cfg, seed=0).report


def test_training_stops_before_it_starts_and_names_the_files(messy, tmp_path):
    config = tiny_config(tmp_path, "vit", data={"train_dir": str(messy)})
    with pytest.raises(ConfigError) as caught:
        train.main([str(config)])
    message = str(caught.value)
    for name in BAD:
        assert name in message
    assert "data.on_bad_image=skip" in message
    out = tmp_path / "out"
    assert (out / "data_audit.json").is_file() and not (out / "model.safetensors").exists()


def test_training_with_skip_leaves_them_out_and_counts_them(messy, tmp_path):
    config = tiny_config(tmp_path, "vit", data={"train_dir": str(messy), "on_bad_image": "skip", "test_split": 0.2})
    results = train.main([str(config)])
    out = tmp_path / "out"
    assert results["train"]["train_bad_images_skipped"] == len(BAD)
    assert json.loads((out / "train_results.json").read_text())["train_bad_images_skipped"] == len(BAD)
    info = json.loads((out / "run_info.json").read_text())
    assert sum(s["num_images"] for s in info["data"]["splits"].values()) == 24 + 7
    card = (out / "README.md").read_text()
    assert "### Data audit" in card and "5 unreadable or unusable image(s) (skipped)" in card
    assert "1 zero-byte file" in card and "1 truncated image" in card


def test_leak_and_format_shortcut_are_flagged(tmp_path):
    root = tmp_path / "data"
    good_images(root / "train" / "with_mask", "with_mask", 15, seed=5, fmt="png")
    good_images(root / "train" / "without_mask", "without_mask", 15, seed=5, fmt="jpg")
    good_images(root / "val" / "with_mask", "with_mask", 4, seed=6, fmt="png")
    good_images(root / "val" / "without_mask", "without_mask", 4, seed=6, fmt="jpg")
    exact = root / "train" / "with_mask" / "with_mask_5_0.png"
    shutil.copy(exact, root / "val" / "with_mask" / "copy.png")
    near_source = root / "train" / "without_mask" / "without_mask_5_3.jpg"
    Image.open(near_source).resize((56, 56)).save(root / "val" / "without_mask" / "resized.jpg", quality=70)

    cfg = DataConfig(train_dir=str(root / "train"), validation_dir=str(root / "val"), on_leak="keep")
    report = prepare_data(cfg, seed=0).report
    pairs = {(p["a"]["file"].rsplit("/", 1)[-1], p["b"]["file"].rsplit("/", 1)[-1]): p["distance"]
             for p in report["leaks"]}
    assert pairs[("with_mask_5_0.png", "copy.png")] == 0
    assert 0 < pairs[("without_mask_5_3.jpg", "resized.jpg")] <= cfg.near_duplicate_distance
    assert len(pairs) == 2
    shortcut = {s["attribute"]: s for s in report["shortcuts"]}
    assert shortcut["file format"]["balanced_accuracy"] >= 0.95
    assert shortcut["file format"]["per_class"] == {"with_mask": {"PNG": 20}, "without_mask": {"JPEG": 20}}
    assert any("shortcut: file format" in w for w in report["warnings"])

    config = tiny_config(tmp_path, "vit", data={"train_dir": str(root / "train"), "validation_dir": str(root / "val"),
                                                "on_leak": "error"})
    with pytest.raises(ConfigError, match=r"(?s)data.on_leak=drop.*copy.png"):
        train.main([str(config)])
    results = train.main([str(config), "data.on_leak=keep", "--overwrite"])
    assert "eval_accuracy" in results["eval"] and "train_leaked_images_removed" not in results["train"]
    assert "the evaluation may be inflated" in (tmp_path / "out" / "README.md").read_text()
    with pytest.raises(ConfigError, match="replaced by 'data.on_leak'"):
        train.main([str(config), "data.allow_leaks=true"])


def test_audit_command_exit_codes(messy, tmp_path, capsys):
    config = tiny_config(tmp_path, "vit", data={"train_dir": str(messy)})
    assert cli(["audit", str(config)]) == 1
    assert "half.jpg" in capsys.readouterr().err
    assert cli(["audit", str(config), "data.on_bad_image=skip"]) == 0
    assert (tmp_path / "out-audit" / "data_audit.md").read_text().startswith("Checked 36 images")


def test_the_audit_command_never_writes_into_a_run(evaluated_run, tmp_path, capsys):
    """`audit CONFIG data.train_dir=FOLDER` on a config whose output_dir holds a finished run once
    wrote FOLDER's audit into it, and the run's card then said it had checked FOLDER's images."""
    run = tmp_path / "run"
    shutil.copytree(evaluated_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    config = tiny_config(tmp_path, "vit")
    assert cli(["audit", str(config), f"training.output_dir={run}", "data.synthetic_num_images=40"]) == 0
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert json.loads((tmp_path / "run-audit" / "data_audit.json").read_text())["checked_images"] == 40
    assert f"full report: {tmp_path / 'run-audit' / 'data_audit.json'}" in capsys.readouterr().out
    # Sent into the run on purpose: refused before any image is read, nothing written.
    assert cli(["audit", str(config), "--output", str(run)]) == 2
    assert f"{run} holds a run (experiment.yaml)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # Its own folder again: the earlier audit there is the audit's own, replaced.
    assert cli(["audit", str(config), "--output", str(tmp_path / "run-audit"), "data.synthetic_num_images=30"]) == 0
    assert json.loads((tmp_path / "run-audit" / "data_audit.json").read_text())["checked_images"] == 30


def test_empty_class_folder_and_single_class_are_errors(tmp_path):
    root = tmp_path / "d"
    good_images(root / "with_mask", "with_mask", 6, seed=1)
    good_images(root / "without_mask", "without_mask", 6, seed=1)
    (root / "incorrect_mask").mkdir()
    cfg = DataConfig(train_dir=str(root), validation_split=0.3)
    report = prepare_data(cfg, seed=0).report
    assert report["empty_class_folders"] == [str(root / "incorrect_mask")]
    assert report["errors"]
    shutil.rmtree(root / "without_mask")
    shutil.rmtree(root / "incorrect_mask")
    with pytest.raises(ConfigError, match=r"found 1 classes \['with_mask'\]"):
        prepare_data(DataConfig(train_dir=str(root)), seed=0)


def test_imbalance_is_a_warning(tmp_path):
    root = tmp_path / "d"
    good_images(root / "with_mask", "with_mask", 12, seed=1)
    good_images(root / "without_mask", "without_mask", 4, seed=1)
    cfg = DataConfig(train_dir=str(root), validation_split=0.25)
    report = prepare_data(cfg, seed=0).report
    assert not report["errors"]
    assert any(w.startswith("class imbalance in train") for w in report["warnings"])


def test_large_jpeg_is_decoded_in_draft_mode_and_upright(tmp_path):
    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.new("RGB", (4000, 3000), (90, 120, 200)).save(path, exif=exif.tobytes())
    image = load_image({"path": str(path), "bytes": None}, draft_side=96)
    assert image.mode == "RGB" and image.width < image.height
    assert 96 <= min(image.size) <= 3000 // 8 * 2  # decoded at 1/8 scale, not 12 megapixels
    assert load_image(str(path)).size == (3000, 4000)
