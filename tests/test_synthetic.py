import numpy as np
import pytest
from PIL import Image

from facemask.data.synthetic import CLASS_NAMES, sample, write_image_folder


def test_same_seed_and_index_give_the_same_image():
    a, label_a = sample(5, 3, 48)
    b, label_b = sample(5, 3, 48)
    assert label_a == label_b
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_other_seeds_and_indices_give_other_images():
    base = np.asarray(sample(5, 3, 48)[0])
    assert not np.array_equal(base, np.asarray(sample(6, 3, 48)[0]))
    assert not np.array_equal(base, np.asarray(sample(5, 5, 48)[0]))


def test_classes_alternate_and_images_vary():
    images, labels = zip(*(sample(0, i, 32) for i in range(40)))
    assert labels.count(0) == labels.count(1) == 20
    means = [np.asarray(im, dtype=float).mean() for im in images]
    assert np.std(means) > 5  # backgrounds and lighting differ from image to image
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)


def test_image_folder_has_class_folders_and_both_formats(tmp_path):
    root = write_image_folder(tmp_path, 12, 40, seed=1, fmt="mixed")
    for name in CLASS_NAMES:
        files = sorted((root / name).iterdir())
        assert len(files) == 6
        assert {f.suffix for f in files} == {".jpg", ".png"}
        Image.open(files[0]).verify()


def test_cli_writes_the_folder(synth_folder):
    assert sum(1 for _ in synth_folder.rglob("*.*")) == 40
    assert sorted(p.name for p in synth_folder.iterdir()) == CLASS_NAMES


def test_the_street_style_draws_the_same_classes_shifted(tmp_path):
    from facemask.config.loading import load_config
    from facemask.config.schema import ConfigError
    from facemask.data.synthetic import stored_synthetic_dataset

    for index in range(4):
        studio, label = sample(5, index, 48)
        street, street_label = sample(5, index, 48, "street")
        assert label == street_label
        assert not np.array_equal(np.asarray(studio), np.asarray(street))
        assert np.array_equal(np.asarray(street), np.asarray(sample(5, index, 48, "street")[0]))
    # Stored apart: a street set never stands in for the studio set of the same size and seed.
    stored_synthetic_dataset(4, 32, 5, tmp_path)
    stored_synthetic_dataset(4, 32, 5, tmp_path, "street")
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("synthetic-"))
    assert len(names) == 2 and any("-street-" in n for n in names)
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{synthetic: true, synthetic_style: night}}\ntraining: {{output_dir: {tmp_path}/o}}\n"
                      "model: {from_config: {model_type: vit}}\n")
    with pytest.raises(ConfigError, match="data.synthetic_style"):
        load_config(config)
