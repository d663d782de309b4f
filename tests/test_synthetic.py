import numpy as np
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
