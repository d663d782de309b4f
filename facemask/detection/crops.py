"""The part of a scene photo the classifier sees for each face: the detector's box grown by a
margin and made square, as face-mask training images are face crops with some room around the face.

The default margin is the room a typical training crop leaves: the detector's box (brow to chin,
cheek to cheek) is about 70% of the side of a face-mask dataset's crop, so each side gets 0.2 of
the box's size (1.4 x the box in all). That is an estimate, not a measurement on the reference
data (which is not on this machine): `margin_from_images` (`detect --margin-from TRAIN_DIR`)
measures it on your own training images, the derivation this default stands in for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterable, Tuple

import numpy as np

DEFAULT_MARGIN = 0.2


def crop_box(box: Iterable[float], image_size: Tuple[int, int], margin: float = DEFAULT_MARGIN,
             square: bool = True) -> Tuple[int, int, int, int]:
    """The crop around a face box (x0, y0, x1, y1) in an image of `image_size` (width, height):
    `margin` of the box's size added on each side, square when asked, moved (not cut) to stay
    inside the image where the image is large enough."""
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = image_size
    w, h = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
    if square:
        w = h = max(w, h)
    w, h = min(w, width), min(h, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - w / 2, 0.0), width - w)
    top = min(max(cy - h / 2, 0.0), height - h)
    return (int(round(left)), int(round(top)), max(int(round(left + w)), int(round(left)) + 1),
            max(int(round(top + h)), int(round(top)) + 1))


def margin_from_images(paths: Iterable[Path], detector: Any, max_images: int = 200) -> Dict[str, Any]:
    """The margin that reproduces how much of each training image its face fills: on each image
    where the detector finds a face, (image side / box side - 1) / 2 for width and height, averaged;
    the median over images is the margin to crop scenes with."""
    from facemask.evaluation.predict import read_input

    margins, measured, without_face = [], 0, 0
    for path in list(paths)[:max_images]:
        image, _ = read_input(Path(path))
        if image is None:
            continue
        measured += 1
        boxes, _ = detector.detect(np.asarray(image))
        if not len(boxes):
            without_face += 1
            continue
        x0, y0, x1, y1 = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        fill = ((image.width / max(x1 - x0, 1) - 1) / 2 + (image.height / max(y1 - y0, 1) - 1) / 2) / 2
        margins.append(max(fill, 0.0))
    result: Dict[str, Any] = {"images": measured, "without_face": without_face}
    if margins:
        q1, median, q3 = np.percentile(margins, [25, 50, 75])
        result.update(margin=round(float(median), 3), margin_iqr=[round(float(q1), 3), round(float(q3), 3)])
    return result
