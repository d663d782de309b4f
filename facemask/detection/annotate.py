"""Drawing the faces found on a photo or frame: a box coloured by label, with the label and its
probability above it."""

from __future__ import annotations

from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

GREEN, RED = (30, 170, 60), (215, 40, 40)
OTHERS = [(30, 110, 220), (235, 150, 20), (150, 60, 200), (20, 170, 170)]


def label_colours(labels: Sequence[str], positive: int) -> dict:
    """Two labels: green for the mask class (`positive`), red for the other; a palette beyond two."""
    if len(labels) == 2:
        return {label: GREEN if i == positive else RED for i, label in enumerate(labels)}
    return {label: OTHERS[i % len(OTHERS)] for i, label in enumerate(labels)}


def draw_faces(image: Image.Image, faces: List[Tuple[Sequence[float], str, float]], colours: dict) -> Image.Image:
    """A copy of `image` with each (box, label, probability of that label) drawn."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 250))
    font = ImageFont.load_default(size=max(12, round(min(out.size) / 40)))
    for box, label, prob in faces:
        x0, y0, x1, y1 = (float(v) for v in box)
        colour = colours.get(label, OTHERS[0])
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        text = f"{label} {prob:.0%}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 2 * width if y0 - th - 2 * width >= 0 else y1
        tx = max(0.0, min(x0, out.width - tw - 2 * width))
        draw.rectangle((tx, ty, tx + tw + 2 * width, ty + th + 2 * width), fill=colour)
        draw.text((tx + width - left, ty + width - top), text, fill=(255, 255, 255), font=font)
    return out
