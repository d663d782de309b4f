import shutil

import numpy as np
import pytest
from PIL import Image

from facemask.config.schema import ConfigError, DataConfig
from facemask.data.images import load_image, to_rgb
from facemask.data.prepare import prepare_data
from facemask.data.labels import resolve_positive_label
from facemask.data.sources import class_counts
from facemask.pipeline.geometry import random_resized_crop_box


def test_image_folder_labels_come_from_folder_names(synth_folder):
    data = prepare_data(DataConfig(train_dir=str(synth_folder), validation_split=0.25), seed=0).data
    assert data.labels == ["with_mask", "without_mask"]
    assert data.id2label == {0: "with_mask", 1: "without_mask"}
    assert data.label2id == {"with_mask": 0, "without_mask": 1}
    assert set(data.splits) == {"train", "validation"}
    # Stratified: a quarter of each class is held out.
    assert class_counts(data.splits["validation"], "label", data.labels) == {"with_mask": 5, "without_mask": 5}
    assert class_counts(data.splits["train"], "label", data.labels) == {"with_mask": 15, "without_mask": 15}
    first = data.splits["train"][0]["image"]  # stored undecoded: the transform opens it (load_image)
    assert first["path"].startswith(str(synth_folder)) and isinstance(load_image(first), Image.Image)


def test_split_is_deterministic_by_seed_and_holds_out_test_first(synth_folder):
    cfg = DataConfig(train_dir=str(synth_folder), validation_split=0.2, test_split=0.2)
    a = prepare_data(cfg, seed=1).data
    b = prepare_data(cfg, seed=1).data
    c = prepare_data(cfg, seed=2).data
    sizes = {k: len(v) for k, v in a.splits.items()}
    assert sizes == {"train": 24, "validation": 8, "test": 8}
    paths = lambda d, s: [im["path"] for im in d.splits[s]["image"]]  # noqa: E731
    assert paths(a, "test") == paths(b, "test")
    assert paths(a, "test") != paths(c, "test")
    assert not set(paths(a, "test")) & set(paths(a, "train"))
    assert not set(paths(a, "validation")) & set(paths(a, "train"))


def test_validation_dir_is_used_as_given(synth_folder, tmp_path):
    val = tmp_path / "val"
    shutil.copytree(synth_folder, val)
    # The same 40 images on both sides: kept only when asked, else every training copy is dropped.
    data = prepare_data(DataConfig(train_dir=str(synth_folder), validation_dir=str(val), on_leak="keep"), seed=0).data
    assert len(data.splits["train"]) == 40 and len(data.splits["validation"]) == 40
    with pytest.raises(ConfigError, match="every image of the train split is unusable or a copy"):
        prepare_data(DataConfig(train_dir=str(synth_folder), validation_dir=str(val)), seed=0)


def test_local_dataset_folder_through_load_dataset(synth_folder, tmp_path):
    # data.dataset_name goes through datasets.load_dataset, which also takes a local folder.
    root = tmp_path / "hubstyle"
    shutil.copytree(synth_folder, root / "train")
    data = prepare_data(DataConfig(dataset_name=str(root), validation_split=0.25), seed=0).data
    assert data.labels == ["with_mask", "without_mask"] and len(data.splits["validation"]) == 10


def test_wrong_column_lists_the_columns(synth_folder):
    with pytest.raises(ConfigError, match=r"'data.image_column' is 'img'.*columns are: image, label"):
        prepare_data(DataConfig(train_dir=str(synth_folder), image_column="img"), seed=0)


def test_other_class_counts_need_num_labels(synth_folder, tmp_path):
    root = tmp_path / "three"
    shutil.copytree(synth_folder, root)
    (root / "incorrect_mask").mkdir()
    for p in list((root / "with_mask").iterdir())[:6]:
        shutil.copy(p, root / "incorrect_mask" / p.name)
    with pytest.raises(ConfigError, match=r"found 3 classes.*expected 2.*data.num_labels"):
        prepare_data(DataConfig(train_dir=str(root)), seed=0)
    data = prepare_data(DataConfig(train_dir=str(root), num_labels=3, validation_split=0.3), seed=0).data
    assert data.labels == ["incorrect_mask", "with_mask", "without_mask"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="'data.train_dir' is not a folder"):
        prepare_data(DataConfig(train_dir=str(tmp_path / "nope")), seed=0)


def test_synthetic_source(tmp_path):
    data = prepare_data(DataConfig(synthetic=True, synthetic_num_images=20, synthetic_image_size=32,
                                validation_split=0.2, test_split=0.2), seed=0).data
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 12, "validation": 4, "test": 4}
    assert load_image(data.splits["train"][0]["image"]).size == (32, 32)


@pytest.mark.parametrize(
    "labels, configured, expected",
    [
        (["with_mask", "without_mask"], None, 0),
        (["WithoutMask", "WithMask"], None, 1),
        (["mask", "no_mask"], None, 0),
        (["no mask", "mask"], None, 1),
        (["cat", "dog"], None, 1),
        (["with_mask", "without_mask"], "without_mask", 1),
    ],
)
def test_positive_label(labels, configured, expected):
    assert resolve_positive_label(labels, configured) == expected


def test_unknown_positive_label_is_an_error():
    with pytest.raises(ConfigError, match="'data.positive_label' is 'masked'"):
        resolve_positive_label(["with_mask", "without_mask"], "masked")


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_to_rgb_handles_modes(mode):
    image = Image.new("RGB", (8, 6), (200, 100, 50)).convert(mode) if mode != "I;16" else Image.new("I;16", (8, 6), 300)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (8, 6)


def test_to_rgb_applies_exif_orientation():
    image = Image.new("RGB", (8, 4))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: shown upright as 4x8
    image.info["exif"] = exif.tobytes()
    reloaded = image.copy()
    reloaded.getexif()[0x0112] = 6
    assert to_rgb(reloaded).size == (4, 8)


def test_random_resized_crop_box_stays_inside_and_respects_scale():
    import random

    gen = random.Random(0)
    areas = []
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(100, 80, [0.5, 1.0], [3 / 4, 4 / 3], gen)
        assert 0 <= left < right <= 100 and 0 <= top < bottom <= 80
        areas.append((right - left) * (bottom - top) / 8000)
    assert min(areas) >= 0.45 and max(areas) <= 1.0
    assert np.std(areas) > 0.05


def test_split_classes_are_matched_by_name(synth_folder, tmp_path):
    val = tmp_path / "val"
    (val / "without_mask").mkdir(parents=True)  # one class only: its id must still be train's 1
    for p in list((synth_folder / "without_mask").iterdir())[:3]:
        shutil.copy(p, val / "without_mask" / p.name)
    data = prepare_data(DataConfig(train_dir=str(synth_folder), validation_dir=str(val)), seed=0).data
    assert data.splits["validation"]["label"] == [1, 1, 1]
    (val / "mask_chin").mkdir()
    shutil.copy(p, val / "mask_chin" / p.name)
    with pytest.raises(ConfigError, match=r"validation split has classes \['mask_chin'\] that the train split lacks"):
        prepare_data(DataConfig(train_dir=str(synth_folder), validation_dir=str(val)), seed=0)
