"""Things that cover a mouth and nose and are not a mask: the classic false positive of mask
classifiers. Drawn over a face from its five landmarks (left eye, right eye, nose, left and right
mouth corners: RetinaFace's order), at the face's own scale and tilt.

- hand: a palm and four fingers in the face's own skin colour (sampled beside the nose), slightly
  shaded: the hardest case, skin over the mouth.
- scarf: a band of one random colour with a few darker stripes, from the nose's bridge to below
  the chin and wider than the face.
- phone: a dark rounded rectangle held over the mouth, its screen a little lighter.

Every draw is a function of the image, the landmarks, the kind and the generator it is given.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("hand", "scarf", "phone")


def _frame(landmarks: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The face's centre of the lower half, its right and down axes (unit), and eye distance."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = points
    across = right_eye - left_eye
    eye_distance = float(np.hypot(*across)) or 1.0
    right = across / eye_distance
    down = np.array([-right[1], right[0]])
    centre = (nose + (mouth_left + mouth_right) / 2) / 2
    return centre, right, down, eye_distance


def _polygon(centre: np.ndarray, right: np.ndarray, down: np.ndarray, corners: np.ndarray) -> list:
    """Face-frame corners (x along right, y along down) as image points."""
    return [tuple(centre + x * right + y * down) for x, y in corners]


def skin_colour(image: Image.Image, landmarks: np.ndarray) -> Tuple[int, int, int]:
    """The median colour of two small cheek patches beside the nose."""
    centre, right, down, d = _frame(landmarks)
    nose = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)[2]
    pixels = np.asarray(image.convert("RGB"))
    samples = []
    for side in (-1, 1):
        x, y = nose + side * 0.55 * d * right - 0.1 * d * down
        half = max(1, int(0.12 * d))
        xi, yi = int(round(x)), int(round(y))
        patch = pixels[max(0, yi - half):yi + half + 1, max(0, xi - half):xi + half + 1]
        if patch.size:
            samples.append(patch.reshape(-1, 3))
    if not samples:
        return (200, 160, 130)
    return tuple(int(v) for v in np.median(np.concatenate(samples), axis=0))


def draw_occluder(image: Image.Image, landmarks: np.ndarray, kind: str, rng: np.random.Generator) -> Image.Image:
    """A copy of `image` with `kind` (KINDS) over the mouth and nose of the face at `landmarks`."""
    if kind not in KINDS:
        raise ValueError(f"unknown occluder {kind!r}: one of {', '.join(KINDS)}")
    out = image.convert("RGB").copy()
    centre, right, down, d = _frame(landmarks)
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if kind == "hand":
        colour = np.array(skin_colour(out, landmarks), dtype=np.float64)
        tone = tuple(int(v) for v in np.clip(colour * rng.uniform(0.9, 1.05), 0, 255))
        shade = tuple(int(v) for v in np.clip(colour * 0.75, 0, 255))
        tilt = rng.uniform(-0.3, 0.3)
        palm = np.array([(-0.75, -0.35), (0.75, -0.35), (0.8, 0.75), (-0.8, 0.75)]) * d
        draw.polygon(_polygon(centre, right, down + tilt * right, palm), fill=tone + (255,))
        for k in range(4):  # fingers reaching across the cheek
            y, length = -0.3 + 0.27 * k, 1.35 - 0.1 * k
            finger = np.array([(-0.75, y), (length, y), (length, y + 0.22), (-0.75, y + 0.22)]) * d
            draw.polygon(_polygon(centre, right, down, finger), fill=tone + (255,), outline=shade + (255,))
    elif kind == "scarf":
        colour = rng.integers(0, 256, size=3)
        band = np.array([(-1.3, -0.45), (1.3, -0.45), (1.3, 1.6), (-1.3, 1.6)]) * d
        draw.polygon(_polygon(centre, right, down, band), fill=tuple(int(v) for v in colour) + (255,))
        stripe = tuple(int(v) for v in colour * 0.6) + (255,)
        for k in range(int(rng.integers(2, 5))):
            y = rng.uniform(-0.4, 1.4)
            line = np.array([(-1.3, y), (1.3, y), (1.3, y + 0.08), (-1.3, y + 0.08)]) * d
            draw.polygon(_polygon(centre, right, down, line), fill=stripe)
    else:
        body = int(rng.integers(10, 45))
        angle = rng.uniform(-0.35, 0.35)
        axis_right = right * math.cos(angle) + down * math.sin(angle)
        axis_down = np.array([-axis_right[1], axis_right[0]])
        case = np.array([(-0.5, -0.55), (0.5, -0.55), (0.5, 0.95), (-0.5, 0.95)]) * d
        draw.polygon(_polygon(centre, axis_right, axis_down, case), fill=(body, body, body + 5, 255))
        screen = np.array([(-0.42, -0.45), (0.42, -0.45), (0.42, 0.85), (-0.42, 0.85)]) * d
        glow = body + int(rng.integers(10, 40))
        draw.polygon(_polygon(centre, axis_right, axis_down, screen), fill=(glow, glow, glow + 10, 255))
    # A soft edge, as a real object's at this resolution: no hard drawn line the model could key on.
    layer = layer.filter(ImageFilter.GaussianBlur(radius=max(0.5, d / 40)))
    out.paste(layer, (0, 0), layer)
    return out
