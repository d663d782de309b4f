"""Opening a stored image the one way training, evaluation, the audit and prediction all use:
upright RGB, decoded near the size it is needed at.
"""

from __future__ import annotations

import io
from typing import Any, Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps

# Modes Image.reduce() takes; the others are converted to the nearest of them first.
_REDUCIBLE = {"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"}
# Pixels converted at a time from a 16-bit, 32-bit or float image: the copies stay this small.
_BLOCK_PIXELS = 1 << 18


def load_image(item: Any, draft_side: Optional[int] = None) -> Image.Image:
    """Open a stored image (datasets' {"bytes", "path"}, a path or a PIL image) as upright RGB.

    With `draft_side`, an image whose shorter side is at least twice that is shrunk by a whole
    factor right after decoding, its shorter side kept at `draft_side` or more: JPEGs decoded at
    the smallest DCT scale that keeps it (Image.draft), every format then box-averaged
    (Image.reduce), before any conversion. A 40-megapixel photo then costs its decode and a copy a
    fraction of its size, not several full-size copies.
    """
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, dict):
        source = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]
    else:
        source = item
    image = Image.open(source)
    if draft_side and image.format == "JPEG":
        image.draft("RGB", (draft_side, draft_side))
    image.load()
    # In place: no full-size copy where there is nothing to turn (and one where there is).
    ImageOps.exif_transpose(image, in_place=True)
    if draft_side:
        image = shrink(image, draft_side)
    return to_rgb(image)


def shrink(image: Image.Image, side: int) -> Image.Image:
    """`image` reduced by the largest whole factor that keeps its shorter side at `side` or more
    (Image.reduce: the mean of each factor x factor box); as it is when that factor is 1."""
    factor = min(image.size) // side
    if factor < 2:
        return image
    if image.mode not in _REDUCIBLE:
        image = image.convert(_reducible_mode(image))
    return image.reduce(factor)


def _reducible_mode(image: Image.Image) -> str:
    if image.mode.startswith("I;16"):
        return "I"
    if image.mode == "1":
        return "L"
    return "RGBA" if _has_alpha(image) else "RGB"


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB, whatever the file's orientation tag and colour mode."""
    if image.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None):
        image = ImageOps.exif_transpose(image)  # a copy only where there is something to turn
    if image.mode == "RGB":
        return image
    if _has_alpha(image):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return scaled_to_8_bits(image).convert("RGB")
    return image.convert("RGB")


def scaled_to_8_bits(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit grey, scaled by its maximum:
    floor(value * 255 / max), in integers for integer images (exact) and float32 for float ones,
    a block of rows at a time, so no full-size float64 (or any other) copy is made. Negative
    values count as 0."""
    width, height = image.size
    high = float(image.getextrema()[1])
    high = high if high > 0 else 1.0
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, width))
    for top in range(0, height, rows):
        block = np.asarray(image.crop((0, top, width, min(height, top + rows))))
        if image.mode == "F":
            block = np.maximum(block, 0, dtype=np.float32)
            block *= np.float32(255 / high)
        else:
            block = np.maximum(block, 0, dtype=np.int64)
            block *= 255
            block //= int(high)
        np.minimum(block, 255, out=block)
        out[top:top + block.shape[0]] = block
    return Image.fromarray(out, "L")

