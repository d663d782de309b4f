"""The figures a newcomer opens first: the error gallery, the training curves, explain's overlays.
Checked on the PNG as written: its size, its pixels."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from facemask.evaluation.figures import error_gallery_png, explanation_png, training_curves_png

GREY = (128, 128, 128)


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def key_colours(image):
    """How many pixels are clearly red and clearly blue: on grey images under flat maps, only a
    colour key has any."""
    r, b = image[..., 0], image[..., 2]
    return int((r > b + 60).sum()), int((b > r + 60).sum())


def grey_maps(n):
    images = [Image.new("RGB", (40, 40), GREY) for _ in range(n)]
    return images, [SimpleNamespace(seen=np.asarray(i), grid=np.zeros((5, 5))) for i in images]


def test_a_gallery_of_two_errors_is_as_wide_as_they_need_and_keeps_its_titles(tmp_path):
    images, maps = grey_maps(2)
    errors = [{"true_label": "with_mask", "predicted_label": "without_mask", "confidence": 0.9}] * 2
    assert error_gallery_png(images, errors, tmp_path / "errors.png", maps=maps)
    image = pixels(tmp_path / "errors.png")
    # Two image + map pairs at 2.4 in each, and the key: once a 1920-px canvas for four, half empty.
    assert image.shape[1] <= 2 * 2 * 240 + 100
    # The two-line titles lie inside the figure: text near the top, none cut by its edge.
    assert (image[0] == 255).all() and (image[:25] < 100).any()
    red, blue = key_colours(image)
    assert red > 50 and blue > 50  # the maps' colour key


def test_explain_overlays_have_a_colour_key(tmp_path):
    _, (found,) = grey_maps(1)
    assert explanation_png(found.seen, found.grid, "face.png: with_mask 0.93\nmap for with_mask", tmp_path / "o.png")
    red, blue = key_colours(pixels(tmp_path / "o.png"))
    assert red > 50 and blue > 50


def test_a_single_logged_training_loss_is_drawn(tmp_path):
    """A 1-epoch run logs one training loss: a line of one point drew nothing."""
    history = [{"step": 10, "loss": 0.6}, {"step": 10, "eval_accuracy": 0.8, "eval_loss": 0.5}]
    assert training_curves_png(history, tmp_path / "curves.png")
    image = pixels(tmp_path / "curves.png")
    height, width = image.shape[:2]
    # tab:blue, the training loss, in the middle of the axes (its one step); the legend is at the right.
    blue = (np.abs(image - (31, 119, 180)).sum(axis=2) < 60)
    assert blue[height // 4: 3 * height // 4, int(width * 0.35): int(width * 0.6)].sum() > 20
