"""The part of a scene photo the classifier sees for each face: the detector's box grown by a
margin and made square, as face-mask training images are face crops with some room around the face.

The margin is derived from the training images themselves: on each one the detector's box is
found, and the margin that would make the box fill the image as much as the face fills it is
(image side / box side - 1) / 2. `detect` measures it on the run's own training folder when that
folder is on this machine (or on `--margin-from DIR`), the median over up to 200 images spread
over the folder. Where there is nothing to measure (a Hub model, a drawn set), DEFAULT_MARGIN
stands in: 0.2 on each side (a crop 1.4 x the box), an estimate from the detector's box (brow to
chin, cheek to cheek) being about 70% of the side of a typical face-mask training crop, not a
measurement on the reference data, which is not on this machine.
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
    from facemask.runtime.files import read_input

    paths = list(paths)
    # Spread over the (sorted) list, so that a class-per-folder layout gives every class its share.
    step = max(1.0, len(paths) / max_images)
    chosen = [paths[int(i * step)] for i in range(min(len(paths), max_images))]
    margins, measured, without_face = [], 0, 0
    for path in chosen:
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


def run_margin(model: str, detector: Any) -> Tuple[float, str]:
    """The margin for a model's crops, and how it was found: measured on the run's training folder
    (experiment.yaml's data.train_dir) where MODEL is a run folder and that folder is here."""
    from facemask.runtime.files import collect_paths
    from facemask.run_folder import read_run

    folder = Path(model).expanduser()
    train_dir = ((read_run(folder).experiment.get("data") or {}).get("train_dir")
                 if folder.is_dir() else None)
    if train_dir and Path(train_dir).expanduser().is_dir():
        paths, _ = collect_paths([str(Path(train_dir).expanduser())])
        measured = margin_from_images(paths, detector)
        if "margin" in measured:
            return measured["margin"], describe(measured, f"the run's training images ({train_dir})")
    return DEFAULT_MARGIN, "the default (no training images of the run to measure it on here)"


def describe(measured: Dict[str, Any], source: str) -> str:
    faces = measured["images"] - measured["without_face"]
    return f"measured on {source}: median over {faces} images with a face, quartiles {measured['margin_iqr']}"
