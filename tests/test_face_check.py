"""predict and explain on inputs that are not one face filling the image (detection/framing.py):
a scene, a face far away, a group, no face at all are classified whole only with a warning that
points to `detect`; --crop-face classifies the largest face, cropped as detect crops it."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MODELS, compose_scene, face_crops
from PIL import Image
from transformers import AutoConfig, AutoModelForImageClassification, ViTImageProcessorPil

from facemask.__main__ import main
from facemask.detection.crops import DEFAULT_MARGIN, crop_box
from facemask.detection.detectors import load_detector
from facemask.detection.framing import MIN_FACE_SHARE, frame


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One face crop, one face small in a street-sized scene, two faces side by side, no face."""
    root = tmp_path_factory.mktemp("faces")
    face, _ = face_crops()
    face.save(root / "portrait.png")
    compose_scene(places=((400, 250, 0.6),))[0].save(root / "street.png")
    compose_scene(size=(320, 200), places=((0, 5, 1.0), (165, 5, 1.0)))[0].save(root / "pair.png")
    Image.new("RGB", (200, 200), (90, 140, 60)).save(root / "lawn.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    fields = dict(TINY_MODELS["vit"])
    config = AutoConfig.for_model(fields.pop("model_type"), num_labels=2, id2label={0: "with_mask", 1: "without_mask"},
                                  label2id={"with_mask": 0, "without_mask": 1}, **fields)
    AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_the_detector_tells_one_face_from_a_scene_a_group_and_no_face(inputs):
    detector = load_detector()
    found = {name: frame(Image.open(inputs / f"{name}.png").convert("RGB"), detector)
             for name in ("portrait", "street", "pair", "lawn")}
    assert found["portrait"].problem is None and found["portrait"].share > 0.5
    assert found["street"].faces == 1 and found["street"].share < MIN_FACE_SHARE
    assert found["street"].problem.startswith("the largest face fills")
    assert found["pair"].problem == "2 faces"
    assert found["lawn"].problem == "no face found" and found["lawn"].box is None


def test_predict_warns_on_scenes_and_points_to_detect(run, inputs, capsys):
    assert main(["predict", str(run), str(inputs)]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 4  # every image, classified whole
    warning = captured.err
    assert "3 of 4 images are not one face filling the image" in warning
    assert "python -m facemask detect" in warning and "--crop-face" in warning
    for name in ("street.png: the largest face fills", "pair.png: 2 faces", "lawn.png: no face found"):
        assert name in warning
    assert "portrait.png" not in warning


def test_crop_face_classifies_the_largest_face_as_detect_crops_it(run, inputs, tmp_path, capsys):
    from facemask.evaluation.loading import load_classifier

    out = tmp_path / "rows.json"
    assert main(["predict", str(run), str(inputs / "street.png"), str(inputs / "lawn.png"), "--crop-face",
                 "--output", str(out)]) == 0
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in json.loads(out.read_text())}
    err = capsys.readouterr().err
    # Only the image without a face to crop is left whole, and said so.
    assert "1 of 2 images" in err and "lawn.png: no face found" in err and "street.png" not in err
    street = Image.open(inputs / "street.png").convert("RGB")
    box = frame(street, load_detector()).box
    crop = street.crop(crop_box(box, street.size, DEFAULT_MARGIN))
    expected = load_classifier(str(run)).probabilities([crop])[0]
    whole = load_classifier(str(run)).probabilities([street])[0]
    assert rows["street.png"]["prob_with_mask"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert abs(float(expected[0]) - float(whole[0])) > 1e-4  # the crop is what changed the answer

    maps = tmp_path / "maps"
    assert main(["explain", str(run), str(inputs / "street.png"), str(inputs / "pair.png"), "--crop-face",
                 "--output", str(maps)]) == 0
    table = {r["overlay"]: r for r in json.loads((maps / "explanations.json").read_text())["images"]}
    assert table["street.png"]["face"]["crop"] == list(crop_box(box, street.size, DEFAULT_MARGIN))
    assert table["street.png"]["probabilities"]["with_mask"] == pytest.approx(float(expected[0]), abs=1e-5)
    assert table["pair.png"]["face"]["problem"] == "2 faces" and "crop" in table["pair.png"]["face"]
    assert "only the largest was classified" in capsys.readouterr().err


def test_explain_without_crop_records_the_check_and_warns(run, inputs, tmp_path, capsys):
    out = tmp_path / "maps"
    assert main(["explain", str(run), str(inputs / "portrait.png"), str(inputs / "street.png"),
                 "--output", str(out)]) == 0
    rows = {r["overlay"]: r for r in json.loads((out / "explanations.json").read_text())["images"]}
    assert rows["portrait.png"]["face"]["problem"] is None and "crop" not in rows["portrait.png"]["face"]
    assert rows["street.png"]["face"]["problem"].startswith("the largest face fills")
    assert np.asarray(rows["street.png"]["map"]).shape == (4, 4)
    err = capsys.readouterr().err
    assert "1 of 2 images" in err and "python -m facemask detect" in err


def test_a_large_jpeg_is_checked_and_cropped_at_full_resolution_not_at_the_draft(run, tmp_path, capsys):
    """The commands decode JPEGs at about twice the model's side (64 px here), where a face of a
    1920 x 1080 photo is a few pixels: the check sees the photo at its own size and the crop
    comes from the full image."""
    from facemask.evaluation.loading import load_classifier

    photo = tmp_path / "square.jpg"
    scene, boxes = compose_scene(size=(1920, 1080), places=((900, 500, 1.2),))
    scene.save(photo, quality=92)
    out = tmp_path / "rows.json"
    assert main(["predict", str(run), str(photo), "--crop-face", "--output", str(out)]) == 0
    assert "not one face" not in capsys.readouterr().err
    maps = tmp_path / "maps"
    assert main(["explain", str(run), str(photo), "--crop-face", "--output", str(maps)]) == 0
    face = json.loads((maps / "explanations.json").read_text())["images"][0]["face"]
    x0, y0, x1, y1 = face["crop"]
    assert face["problem"].startswith("the largest face fills") and face["faces"] == 1
    fx0, fy0, fx1, fy1 = boxes[0]
    assert x0 < fx0 < fx1 < x1 and y0 < fy0 < fy1 < y1 and x1 - x0 > 150  # full-resolution pixels
    full = Image.open(photo).convert("RGB")
    expected = load_classifier(str(run)).probabilities([full.crop((x0, y0, x1, y1))])[0]
    row = json.loads(out.read_text())[0]
    assert row["prob_with_mask"] == pytest.approx(float(expected[0]), abs=1e-5)
