"""Hugging Face Inference Endpoints handler for a face-mask classifier pushed by
`python -m facemask push RUN --model-id ID --handler`.

It serves the run as `python -m facemask predict` does: the image opened upright in RGB (the
orientation tag applied, transparency composited on mid-grey, 16-bit and float images scaled; JPEGs
draft-decoded at no less than twice the model's side), the run's image processor, and the run's
decision rule from handler_config.json (the arg-max, or with a threshold the class it names,
positive_label, where its probability reaches it). Self-contained: an endpoint has transformers and torch, not facemask.

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


class EndpointHandler:
    def __init__(self, path: str = "") -> None:
        self.processor = AutoImageProcessor.from_pretrained(path)
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
