"""The corruption suite, the occluders and the robustness record, on images made here."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from facemask.data.occluders import KINDS, draw_occluder
from facemask.evaluation.corruptions import SEVERITIES, SUITE, corrupt
from facemask.evaluation.robustness import occlusion_test, robustness_test, sample_indices

# A face's five landmarks in a 96-pixel image: eyes, nose, mouth corners (RetinaFace's order).
LANDMARKS = np.array([(34, 38), (62, 38), (48, 52), (38, 66), (58, 66)], dtype=np.float64)


def face(seed: int, side: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(120, 230, 3)))
    draw = ImageDraw.Draw(image)
    draw.ellipse((18, 14, 78, 90), fill=(205, 160, 130))
    for x, y in LANDMARKS[:2]:
        draw.ellipse((x - 4, y - 3, x + 4, y + 3), fill=(40, 30, 30))
    draw.line([tuple(LANDMARKS[3]), tuple(LANDMARKS[4])], fill=(150, 60, 60), width=3)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (side, side, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("name", list(SUITE))
def test_each_corruption_is_reproducible_and_grows_with_severity(name):
    image = face(0)
    changes = []
    for severity in SEVERITIES:
        once, again = corrupt(image, name, severity, seed=3), corrupt(image, name, severity, seed=3)
        assert once.size == image.size and np.array_equal(np.asarray(once), np.asarray(again))
        changes.append(difference(image, once))
    assert changes[0] > 0.3, changes  # severity 1 changes the image at this side too
    assert changes[-1] > changes[0] and all(b >= a - 0.6 for a, b in zip(changes, changes[1:])), changes


def test_the_random_draws_depend_on_the_seed_and_the_image_not_the_order():
    a, b = face(0), face(1)
    first = [corrupt(im, "gaussian_noise", 2, seed=0) for im in (a, b)]
    reversed_order = [corrupt(im, "gaussian_noise", 2, seed=0) for im in (b, a)][::-1]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(first, reversed_order))
    assert not np.array_equal(np.asarray(corrupt(a, "gaussian_noise", 2, seed=1)), np.asarray(first[0]))
    with pytest.raises(KeyError, match="unknown corruption 'fog'"):
        corrupt(a, "fog", 1)


@pytest.mark.parametrize("kind", KINDS)
def test_an_occluder_covers_the_mouth_and_nose_and_leaves_the_eyes(kind):
    image = face(2)
    covered = draw_occluder(image, LANDMARKS, kind, np.random.default_rng(0))
    before, after = np.asarray(image, np.float32), np.asarray(covered, np.float32)
    mouth = (slice(60, 72), slice(38, 58))
    eyes = (slice(33, 41), slice(28, 68))
    assert np.abs(after[mouth] - before[mouth]).mean() > 15
    assert np.abs(after[eyes] - before[eyes]).mean() < 3


class Brightness:
    """A 'model' that says mask (class 0) for dark images: corruptions that darken or flatten
    change its answers, and a dark phone over the mouth flips it."""

    def __init__(self, threshold: float):
        self.threshold = threshold

    def __call__(self, images):
        means = np.array([np.asarray(image, np.float32).mean() for image in images])
        mask = (means < self.threshold).astype(np.float32)
        return np.stack([mask, 1 - mask], axis=1)


class FixedFace:
    """A detector that finds the drawn face in the images it is told to, none in the others."""

    def __init__(self, found):
        self.found = found

    def detect_landmarks(self, image, score_threshold=0.6, nms_threshold=0.4):
        if not self.found(image):
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
        scale = image.shape[0] / 96
        return np.array([[14, 14, 82, 90]]) * scale, np.array([0.9]), LANDMARKS[None] * scale


class Identity:
    def __call__(self, images, do_normalize, do_rescale, return_tensors):
        assert not do_normalize and not do_rescale
        return {"pixel_values": np.stack([np.asarray(im, np.float32).transpose(2, 0, 1) for im in images])}


def test_the_record_holds_every_cell_with_its_interval_and_counts_skipped_faces():
    import datasets

    images = [face(k) for k in range(12)]
    labels = ["with_mask", "without_mask"]
    label_ids = np.array([1] * 12)
    rows = datasets.Dataset.from_dict({"image": images, "label": label_ids.tolist()},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.ClassLabel(names=labels)}))
    # Bright images read as no mask; the detector misses the faces of 4 images (their top-left pixel is darker).
    brightness = [float(np.asarray(im, np.float32).mean()) for im in images]
    model = Brightness(min(brightness) - 8)
    detector = FixedFace(lambda pixels: pixels[:, :, 0].mean() > 0 and int(pixels[0, 0, 0]) % 3 != 0)
    missed = sum(int(np.asarray(im)[0, 0, 0]) % 3 == 0 for im in images)
    record = robustness_test(rows, "image", labels, label_ids, Identity(), model, detector, max_images=None)
    assert record["images"] == 12 and record["clean_accuracy"] == 1.0 and not record["sampled"]
    assert set(record["corruptions"]) == set(SUITE)
    for name, severities in record["corruptions"].items():
        assert list(severities) == ["1", "2", "3", "4", "5"]
        for cell in severities.values():
            assert 0 <= cell["low"] <= cell["accuracy"] <= cell["high"] <= 1
    # Darkening makes the brightness model say "mask": low light at its worst is below the clean level.
    assert record["corruptions"]["low_light"]["5"]["accuracy"] < 1.0
    assert record["worst_corruption"] in SUITE
    for name, severities in record["corruptions"].items():  # one owner of each corruption's mean
        assert record["corruption_means"][name] == pytest.approx(np.mean([c["accuracy"] for c in severities.values()]))
    assert record["worst_corruption"] == min(record["corruption_means"], key=record["corruption_means"].get)
    occlusion = record["occlusion"]
    assert occlusion["skipped"] == missed and occlusion["images"] == occlusion["tested"] == 12 - missed
    assert 0 <= occlusion["low"] <= occlusion["flip_rate"] <= occlusion["high"]
    by = occlusion["by_occluder"]
    assert all(k["images"] == 12 - missed for k in by.values())
    # The dark phone makes this brightness model say "mask"; the headline counts an image once.
    assert by["phone"]["flip_rate"] > 0 and by["phone"]["flip_rate"] >= by["hand"]["flip_rate"]
    assert max(k["flip_rate"] for k in by.values()) <= occlusion["flip_rate"] <= sum(k["flip_rate"] for k in by.values())
    assert all(0 <= g["row"] < 12 for g in occlusion["gallery"]) and occlusion["gallery"]
    assert set(record["seconds"]) == {"decode", "clean", "corruptions", "occlusion", "total"}
    assert record["cost_vs_clean"] > 1


def test_occlusion_says_why_when_no_face_was_read_as_no_mask():
    images = [face(k) for k in range(3)]
    said_mask = lambda images: np.tile([1.0, 0.0], (len(images), 1))  # noqa: E731  everything "with_mask"
    result = occlusion_test(images, np.array([1, 1, 1]), ["with_mask", "without_mask"], FixedFace(lambda p: True),
                            said_mask, lambda im: im, 0)
    assert result["flip_rate"] is None and result["tested"] == 0 and "none of the no-mask faces" in result["reason"]


def test_a_sample_is_seeded_and_stated():
    assert list(sample_indices(10, None, 0)) == list(range(10))
    a, b = sample_indices(1000, 50, 7), sample_indices(1000, 50, 7)
    assert len(a) == 50 and list(a) == list(b) and list(a) == sorted(a)
    assert list(sample_indices(1000, 50, 8)) != list(a)


def test_occlusion_needs_a_mask_class_by_name():
    result = occlusion_test([face(0)], np.array([0]), ["cat", "dog"], FixedFace(lambda p: True), None, None, 0)
    assert result["flip_rate"] is None and "mask class by name" in result["reason"]


def test_no_robustness_files_when_it_is_off(tiny_run, evaluated_run):
    from facemask import run_folder

    run = tiny_run("vit")  # tiny_config's run: data.robustness=false
    written = {p.name for p in run.out.iterdir()}
    assert not any(name.endswith(("_robustness.json", "_robustness.png", "_occlusion.png")) for name in written)
    assert run_folder.ROBUSTNESS.path(evaluated_run, "test").is_file()  # the same config with it on has it
    card = (run.out / "README.md").read_text()
    assert "## Robustness\n\nnot recorded (data.robustness, or evaluate.py RUN --robustness)." in card


def test_a_trained_run_records_its_robustness_and_the_card_shows_it(evaluated_run):
    import json

    record = json.loads((evaluated_run / "test_robustness.json").read_text())
    assert {"clean_accuracy", "corruptions", "occlusion"} <= set(record)
    assert set(record["occlusion"]) >= {"flip_rate", "low", "high", "images", "skipped"}
    assert record["images"] == record["of_images"] > 0 and (evaluated_run / "test_robustness.png").is_file()
    card = (evaluated_run / "README.md").read_text()
    section = card[card.index("## Robustness"):card.index("## Slices")]
    assert "| gaussian noise |" in section and "Mean corruption accuracy" in section
    assert f"clean {record['clean_accuracy']:.4f}" in section and "A hand is not a mask" in section
    assert "test_robustness.png" in section


def test_evaluate_robustness_on_other_images_with_a_sample(evaluated_run, tmp_path):
    import json

    import evaluate

    out = tmp_path / "eval"
    evaluate.main([str(evaluated_run), "--data", "synthetic", "--num-images", "30", "--image-size", "48",
                   "--split", "other", "--output-dir", str(out), "--robustness", "--robustness-max-images", "20",
                   "--error-maps", "none"])
    record = json.loads((out / "other_robustness.json").read_text())
    assert record["images"] == 20 and record["of_images"] == 30 and record["sampled"]
    assert all(len(cells) == 5 for cells in record["corruptions"].values())
    # The occlusion test covers the sample's no-mask images: each one tested or skipped for want of a face.
    import csv

    with open(out / "other_predictions.csv", newline="") as f:
        truth = [row["true_label"] for row in csv.DictReader(f)]
    sampled = [truth[k] for k in sample_indices(30, 20, seed=1)]  # evaluate.py's --seed default
    occlusion = record["occlusion"]
    assert occlusion["images"] + occlusion["skipped"] == sampled.count("without_mask") > 0


def test_the_drawn_set_draws_occluders_on_faces_without_a_mask_only_when_asked():
    from facemask.data.synthetic import WITH_MASK, sample

    for index in range(6):
        plain, label = sample(3, index, 64)
        occluded, same_label = sample(3, index, 64, occluders=1.0)
        assert same_label == label  # an occluded face is still labelled without a mask
        same = np.array_equal(np.asarray(plain), np.asarray(occluded))
        assert same == (label == WITH_MASK), index  # masked faces untouched: the default set's pixels stand
    from conftest import REPO

    from facemask.config.loading import load_config
    from facemask.config.schema import ConfigError

    with pytest.raises(ConfigError, match="synthetic_occluders"):
        load_config(REPO / "configs" / "quickstart.yaml", ["data.synthetic_occluders=1.5"])


def test_synth_writes_occluded_faces_under_their_own_label(tmp_path):
    from facemask.__main__ import main

    assert main(["synth", str(tmp_path / "a"), "--num-images", "8", "--image-size", "48", "--format", "png"]) == 0
    assert main(["synth", str(tmp_path / "b"), "--num-images", "8", "--image-size", "48", "--format", "png",
                 "--occluders", "1"]) == 0
    for name in ("with_mask", "without_mask"):
        plain, occluded = sorted((tmp_path / "a" / name).iterdir()), sorted((tmp_path / "b" / name).iterdir())
        assert [p.name for p in plain] == [p.name for p in occluded] and len(plain) == 4
        same = [p.read_bytes() == q.read_bytes() for p, q in zip(plain, occluded)]
        assert all(same) if name == "with_mask" else not any(same)
    assert main(["synth", str(tmp_path / "c"), "--num-images", "8", "--occluders", "2"]) == 2
