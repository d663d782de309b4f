"""Is an input one face filling the image, as the classifier's training images are? `predict` and
`explain` classify a whole image as if it were one face crop; on a photo of a scene (a street, a
group, a face far away) that answer is about the scene, not a face. The detector says which case
an input is; the commands warn and point to `detect` (every face, each cropped), or, with
`--crop-face`, classify the largest face cropped as `detect` crops it (crops.py owns the margin).

The threshold for "filling the image": on the 800 real face crops of FM12K's validation folder
(the development set), the detector's box (side as the square root of its area) covers 87% of
the image's shorter side at the median and 56% at the 0.5th percentile; a crop with detect's
default margin gives 71%. MIN_FACE_SHARE, 30%, is about half the smallest of those: a face that
small is a face in a scene. The detector finds a face in 95% of those crops (after small images
are enlarged for it; 93% without), so one crop in twenty is flagged "no face found" though it
holds one: the warning says what the detector saw, not that the label is wrong. Measured by hand
(`detect_landmarks` over the folder); none of the 800 holds a second face half the size of the
first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from facemask.detection.crops import crop_box
from facemask.runtime.files import read_input

MIN_FACE_SHARE = 0.3
# A second face at least this share of the largest's side makes the image a group, not one face.
SEVERAL = 0.5
# The detector's view of an input: small crops enlarged (it finds faces from about 16 px, and the
# FM12K crops go down to 27 px), large photos shrunk (a face filling 30% of 640 px is 190 px).
_DETECT_MIN_SIDE, _DETECT_MAX_SIDE = 160, 640


@dataclass
class Framing:
    """What the detector found in one image: how many faces, the largest's box (the image's own
    pixels) and its side's share of the image's shorter side, and why the image is not one face
    filling it (None when it is)."""

    faces: int
    share: float
    box: Optional[Tuple[float, float, float, float]]
    problem: Optional[str]


def _faces(image: Image.Image, detector: Any, detector_threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """Boxes and five landmarks of every face, in the image's own pixels, found at the detector's
    view of it (small images enlarged, large ones shrunk)."""
    scale = min(_DETECT_MAX_SIDE / max(image.size), max(1.0, _DETECT_MIN_SIDE / min(image.size)))
    view = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    boxes, _, points = detector.detect_landmarks(np.asarray(view.convert("RGB")), detector_threshold)
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) / scale, np.asarray(points, np.float64) / scale


def largest_face_landmarks(image: Image.Image, detector: Any, detector_threshold: float = 0.6) -> Optional[np.ndarray]:
    """The five landmarks (5 x (x, y), the image's pixels) of its largest face, or None."""
    boxes, points = _faces(image, detector, detector_threshold)
    if not len(boxes):
        return None
    return points[int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))]


def frame(image: Image.Image, detector: Any, detector_threshold: float = 0.6) -> Framing:
    boxes, _ = _faces(image, detector, detector_threshold)
    if not len(boxes):
        return Framing(0, 0.0, None, "no face found")
    sides = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    largest = int(np.argmax(sides))
    share = float(sides[largest] / min(image.size))
    box = tuple(float(v) for v in boxes[largest])
    several = int((sides >= SEVERAL * sides[largest]).sum())
    if several > 1:
        return Framing(len(boxes), share, box, f"{several} faces")
    if share < MIN_FACE_SHARE:
        return Framing(len(boxes), share, box, f"the largest face fills {share:.0%} of the image's side")
    return Framing(len(boxes), share, box, None)


@dataclass
class FaceCheck:
    """The check of each input a command classifies, and with `margin` (--crop-face) the crop of
    its largest face: call it on (path, image) for the image to classify. `found` keeps each
    path's result for the command's table and its warning (a crop in the full image's pixels)."""

    detector: Any
    margin: Optional[float] = None
    square: bool = True
    detector_threshold: float = 0.6
    found: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def __call__(self, path: Path, image: Image.Image) -> Image.Image:
        # The commands decode a JPEG reduced to about twice the model's input (a draft), enough for
        # the whole image but not for a face in it: the detector gets the file again at its own
        # view's size, and a face's crop comes, as detect's does, from the full image.
        try:
            with Image.open(path) as stored:
                full_side = max(stored.size)
        except OSError:  # the commands' decoder read it; without its header's size, what it gave stands
            full_side = max(image.size)
        view = image
        if max(image.size) < min(_DETECT_MAX_SIDE, full_side):
            view = read_input(Path(path), _DETECT_MAX_SIDE)[0] or image
        seen = frame(view, self.detector, self.detector_threshold)
        result: Dict[str, Any] = {"faces": seen.faces, "face_share": round(seen.share, 3), "problem": seen.problem}
        if self.margin is not None and seen.box is not None:
            source = view if max(view.size) >= full_side else (read_input(Path(path))[0] or view)
            scale_x, scale_y = source.width / view.width, source.height / view.height
            box = (seen.box[0] * scale_x, seen.box[1] * scale_y, seen.box[2] * scale_x, seen.box[3] * scale_y)
            crop = crop_box(box, source.size, self.margin, self.square)
            result["crop"] = list(crop)
            image = source.crop(crop)
        self.found[str(path)] = result
        return image

    def unframed(self) -> List[Tuple[str, str]]:
        """(path, problem) of the inputs classified whole though they are not one face filling the
        image: all such inputs, or with --crop-face those without a face to crop."""
        return [(path, r["problem"]) for path, r in self.found.items()
                if r["problem"] and "crop" not in r]

    def warning(self, command: str, total: int) -> Optional[str]:
        """The stderr lines that say which inputs are scenes rather than faces, and what to use."""
        lines = []
        flagged = self.unframed()
        if flagged:
            shown = "; ".join(f"{Path(p).name}: {why}" for p, why in flagged[:10])
            lines.append(f"warning: {len(flagged)} of {total} images are not one face filling the image, which is "
                         f"what the model was trained on ({shown}{'; ...' if len(flagged) > 10 else ''}). {command} "
                         "classified each as a whole; for photos of scenes use `python -m facemask detect`, which "
                         "classifies every face it finds"
                         + (", or pass --crop-face to classify the largest face" if self.margin is None else ""))
        cropped_groups = [(p, r["problem"]) for p, r in self.found.items() if r["problem"] and "crop" in r
                          and r["faces"] > 1]
        if cropped_groups:
            lines.append(f"note: {len(cropped_groups)} images hold several faces and only the largest was classified "
                         f"({', '.join(Path(p).name for p, _ in cropped_groups[:10])}): `python -m facemask detect` "
                         "classifies every face")
        return "\n".join(lines) or None


def add_face_arguments(parser: Any) -> None:
    """predict's and explain's --crop-face."""
    parser.add_argument("--crop-face", action="store_true",
                        help="classify each image's largest face, cropped as detect crops faces, instead of the "
                             "whole image (an image without a face is classified whole, with a warning)")


def face_check(args: Any) -> FaceCheck:
    """The check of each input that predict and explain run (a warning for one that is not one face
    filling the image), with --crop-face the crop of its largest face with detect's margin."""
    import sys

    from facemask.detection.crops import run_margin
    from facemask.detection.detectors import load_detector

    detector = load_detector()
    margin = None
    if args.crop_face:
        margin, how = run_margin(args.model, detector)
        print(f"--crop-face: the largest face of each image, margin {margin:g} ({how})", file=sys.stderr)
    return FaceCheck(detector, margin)
