"""Hugging Face Inference Endpoints handler for a face-mask classifier pushed by
`python -m facemask push RUN --model-id ID --handler`.

It serves the run as `python -m facemask predict` does: the image opened upright in RGB (the
orientation tag applied, transparency composited on mid-grey, 16-bit and float images scaled; every
image shrunk right after decoding, its shorter side kept at twice the model's side or more: JPEGs
draft-decoded, then a whole-factor reduce), the run's image processor, and the run's decision rule
from handler_config.json (the arg-max, or with a threshold the class it names, positive_label, where
its probability reaches it). Self-contained: an endpoint has transformers and torch, not facemask.

Request: {"inputs": <image bytes, base64 text, or a PIL image>}. Answer: one {"label", "score"} per
class, the decided label first, then the others by probability.
"""

import base64
import io
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForImageClassification


def upright_rgb(image: Image.Image) -> Image.Image:
    if image.getexif().get(0x0112, 1) not in (1, None):  # the orientation tag
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if has_alpha(image):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # floor(value * 255 / max) without a float64 copy, a block of rows at a time.
        width, height = image.size
        high = float(image.getextrema()[1])
        high = high if high > 0 else 1.0
        out = np.empty((height, width), dtype=np.uint8)
        rows = max(1, (1 << 18) // max(1, width))
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
        return Image.fromarray(out, "L").convert("RGB")
    return image.convert("RGB")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def shrink(image: Image.Image, side: int) -> Image.Image:
    """Reduced by the largest whole factor that keeps the shorter side at `side` or more."""
    factor = min(image.size) // side
    if factor < 2:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
        image = image.convert("I" if image.mode.startswith("I;16") else "L" if image.mode == "1"
                              else "RGBA" if has_alpha(image) else "RGB")
    return image.reduce(factor)


class EndpointHandler:
    def __init__(self, path: str = "") -> None:
        # The PIL backend, as training and predict use: with torchvision installed (a typical
        # endpoint) transformers would pick its torchvision backend, whose resize differs.
        self.processor = AutoImageProcessor.from_pretrained(path, backend="pil")
        self.model = AutoModelForImageClassification.from_pretrained(path).eval()
        self.labels = [self.model.config.id2label[i] for i in sorted(self.model.config.id2label)]
        config_path = Path(path) / "handler_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.threshold = config.get("threshold")
        # The class the threshold is on, by name (push --handler writes the run's rule: an operating
        # point's own class); positive_index alone is what older handler_config.json files hold.
        named = config.get("positive_label")
        if named is not None and named not in self.labels:
            raise ValueError(f"{config_path}: positive_label {named!r} is not one of the model's classes {self.labels}")
        self.positive = self.labels.index(named) if named is not None else config.get("positive_index", 1)
        self.draft_side = config.get("draft_side")

    def _image(self, inputs: Any) -> Image.Image:
        if isinstance(inputs, Image.Image):
            return upright_rgb(inputs)
        if isinstance(inputs, str):
            inputs = base64.b64decode(inputs)
        image = Image.open(io.BytesIO(inputs))
        if self.draft_side and image.format == "JPEG":
            image.draft("RGB", (self.draft_side, self.draft_side))
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        if self.draft_side:
            image = shrink(image, self.draft_side)
        return upright_rgb(image)

    def __call__(self, data: Dict[str, Any]) -> List[Dict[str, Any]]:
        image = self._image(data.get("inputs", data) if isinstance(data, dict) else data)
        with torch.no_grad():
            pixels = self.processor([image], return_tensors="pt")["pixel_values"]
            probs = torch.softmax(self.model(pixel_values=pixels).logits.float(), dim=-1)[0].numpy()
        if self.threshold is None:
            choice = int(probs.argmax())
        else:
            choice = self.positive if probs[self.positive] >= self.threshold else 1 - self.positive
        order = [choice] + [int(k) for k in np.argsort(-probs, kind="stable") if k != choice]
        return [{"label": self.labels[k], "score": round(float(probs[k]), 6)} for k in order]
