"""Opening a stored image the one way training, evaluation, the audit and prediction all use:
upright RGB, JPEGs draft-decoded near the size they are needed at.
"""

from __future__ import annotations

import io
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageOps


def load_image(item: Any, draft_side: Optional[int] = None) -> Image.Image:
    """Open a stored image (datasets' {"bytes", "path"}, a path or a PIL image) as upright RGB.

    JPEGs are decoded at the smallest DCT scale that keeps `draft_side` pixels, so a 40-megapixel
    photo costs a fraction of its full decode and memory.
    """
    if isinstance(item, Image.Image):
        image = item
    else:
        if isinstance(item, dict):
            source = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]
        else:
            source = item
        image = Image.open(source)
        if draft_side and image.format == "JPEG":
            image.draft("RGB", (draft_side, draft_side))
        image.load()
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB, whatever the file's orientation tag and colour mode."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        high = arr.max() or 1.0
        return Image.fromarray((arr / high * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
