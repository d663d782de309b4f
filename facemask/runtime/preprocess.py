"""The image processor's preprocessing read from a model folder's preprocessor_config.json and done
with Pillow and numpy: resize, centre crop, rescale, normalise, as transformers' PIL backend does
them for the processors this project saves (ViT, BEiT, DeiT), so the runtime feeds the graph the
pixels the image processor would (tests/test_runtime.py checks them to 1e-6)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from facemask.config.schema import ConfigError
from facemask.data.images import to_rgb
from facemask.run_folder import PROCESSOR

_STANDARD = [0.5, 0.5, 0.5]  # transformers' IMAGENET_STANDARD_MEAN and _STD
# What each processor class does where its saved JSON leaves a key out (transformers 5's
# ViTImageProcessorPil, BeitImageProcessorPil, DeiTImageProcessorPil).
_COMMON: Dict[str, Any] = {"do_resize": True, "do_center_crop": False, "crop_size": None, "do_rescale": True,
                           "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": _STANDARD,
                           "image_std": _STANDARD}
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "ViTImageProcessor": {**_COMMON, "size": {"height": 224, "width": 224}, "resample": Image.Resampling.BILINEAR},
    "BeitImageProcessor": {**_COMMON, "size": {"height": 224, "width": 224}, "crop_size": {"height": 224, "width": 224},
                           "resample": Image.Resampling.BICUBIC},
    "DeiTImageProcessor": {**_COMMON, "size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224},
                           "do_center_crop": True, "resample": Image.Resampling.BICUBIC},
}


# The forms of 'size' transformers' PilBackend.resize reads, in the order it tries them.
SIZE_FORMS = (("shortest_edge", "longest_edge"), ("shortest_edge",), ("max_height", "max_width"), ("height", "width"))


@dataclass(frozen=True)
class Preprocessor:
    """Images (upright RGB, any size) -> float32 pixel values, N x 3 x H x W."""

    size: Dict[str, int]
    resample: int
    do_resize: bool = True
    do_center_crop: bool = False
    crop_size: Optional[Dict[str, int]] = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: Tuple[float, ...] = tuple(_STANDARD)
    image_std: Tuple[float, ...] = tuple(_STANDARD)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Preprocessor":
        path = PROCESSOR.path(Path(folder))
        try:
            fields = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist: the model folder needs the preprocessor_config.json "
                              "that training saves beside config.json") from None
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
        return cls.from_dict(fields, str(path))

    @classmethod
    def from_dict(cls, fields: Dict[str, Any], origin: str = PROCESSOR.name) -> "Preprocessor":
        """A saved image processor's fields (`origin` names them in errors)."""
        kind = fields.get("image_processor_type")
        if kind not in DEFAULTS:
            raise ConfigError(f"{origin}: image_processor_type is {kind!r}; the torch-free runtime reproduces "
                              f"{', '.join(DEFAULTS)} only: use --backend torch")
        merged = {**DEFAULTS[kind], **{k: v for k, v in fields.items() if k in DEFAULTS[kind] and v is not None}}
        size, crop = merged["size"], merged["crop_size"]
        if not isinstance(size, dict) or not any(set(form) <= {k for k, v in size.items() if v} for form in SIZE_FORMS):
            raise ConfigError(f"{origin}: 'size' is {size!r}; the runtime reads "
                              f"{' or '.join('{' + ', '.join(form) + '}' for form in SIZE_FORMS)}: use --backend torch")
        if merged["do_center_crop"] and not (isinstance(crop, dict) and {"height", "width"} <= set(crop)):
            raise ConfigError(f"{origin}: do_center_crop needs 'crop_size' with height and width, got {crop!r}")
        try:
            resample = Image.Resampling(int(merged["resample"]))
        except (TypeError, ValueError):
            raise ConfigError(f"{origin}: 'resample' is {merged['resample']!r}, not a PIL filter (0-5)") from None
        means, stds = list(merged["image_mean"]), list(merged["image_std"])
        if len(means) != 3 or len(stds) != 3:
            raise ConfigError(f"{origin}: image_mean and image_std need one value per RGB channel")
        return cls(size={k: int(v) for k, v in size.items() if v is not None}, resample=int(resample),
                   do_resize=bool(merged["do_resize"]), do_center_crop=bool(merged["do_center_crop"]),
                   crop_size={k: int(v) for k, v in crop.items()} if crop else None,
                   do_rescale=bool(merged["do_rescale"]), rescale_factor=float(merged["rescale_factor"]),
                   do_normalize=bool(merged["do_normalize"]), image_mean=tuple(means), image_std=tuple(stds))

    @property
    def input_side(self) -> int:
        return input_side(self.size, self.crop_size, self.do_center_crop)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            side = self.input_side
            return np.zeros((0, 3, side, side), dtype=np.float32)
        return np.stack([self.pixels(image) for image in images])

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One image as 3 x H x W float32, in the order and arithmetic of the PIL backend's steps."""
        if image.mode != "RGB":
            image = to_rgb(image)
        if self.do_resize:
            height, width = self.resized(image.height, image.width)
            image = image.resize((width, height), resample=self.resample)
        array = np.asarray(image).transpose(2, 0, 1)
        if self.do_center_crop:
            array = self.center_crop(array)
        if self.do_rescale:
            # Upcast first, then down to float32, as transformers' rescale does.
            array = (array.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            array = array.astype(np.float32, copy=False)
            mean = np.array(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.array(self.image_std, dtype=np.float32)[:, None, None]
            array = (array - mean) / std
        return np.ascontiguousarray(array, dtype=np.float32)

    def resized(self, height: int, width: int) -> Tuple[int, int]:
        return resized_shape(self.size, height, width)

    def center_crop(self, array: np.ndarray) -> np.ndarray:
        """transformers' center_crop on C x H x W: the middle crop_size, zero-padded where the image is smaller."""
        height, width = array.shape[1:]
        crop_h, crop_w = self.crop_size["height"], self.crop_size["width"]
        top, left = crop_offsets(height, width, crop_h, crop_w)
        if top >= 0 and left >= 0:
            return array[:, top:top + crop_h, left:left + crop_w]
        new_h, new_w = max(crop_h, height), max(crop_w, width)
        canvas = np.zeros((array.shape[0], new_h, new_w), dtype=array.dtype)
        top_pad, left_pad = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
        canvas[:, top_pad:top_pad + height, left_pad:left_pad + width] = array
        top, left = top + top_pad, left + left_pad
        return canvas[:, max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]


def input_side(size: Mapping[str, Any], crop_size: Optional[Mapping[str, Any]], do_center_crop: bool) -> int:
    """The model's input side: the centre crop's height where the processor crops, else the side
    its resize gives (height, the shorter edge, or the height cap)."""
    chosen = crop_size if do_center_crop else size
    side = chosen.get("height") or chosen.get("shortest_edge") or chosen.get("max_height")
    if not side:
        raise ConfigError(f"no input side in {'crop_size' if do_center_crop else 'size'} {dict(chosen)!r}: "
                          f"it needs height, shortest_edge or max_height")
    return int(side)


def resized_shape(size: Mapping[str, Any], height: int, width: int) -> Tuple[int, int]:
    """(height, width) after the resize, by the rules of transformers' PilBackend.resize for each
    form of 'size' in SIZE_FORMS' order (get_size_with_aspect_ratio, get_resize_output_image_size,
    get_image_size_for_max_height_width, or the fixed size). The one owner of this geometry: the
    runtime's preprocessing and the training pipeline's regions (pipeline/processor.py) both read it."""
    if size.get("shortest_edge") and size.get("longest_edge"):
        return _size_with_aspect_ratio(height, width, int(size["shortest_edge"]), int(size["longest_edge"]))
    if size.get("shortest_edge"):
        short, long = (width, height) if width <= height else (height, width)
        new_short = int(size["shortest_edge"])
        new_long = int(new_short * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    if size.get("max_height") and size.get("max_width"):
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    return int(size["height"]), int(size["width"])


def crop_offsets(height: int, width: int, crop_height: int, crop_width: int) -> Tuple[int, int]:
    """(top, left) of a centre crop as transformers' center_crop rounds them; negative where the
    crop is larger than the image (the processor pads there)."""
    return (height - crop_height) // 2, (width - crop_width) // 2


def _size_with_aspect_ratio(height: int, width: int, size: int, max_size: int) -> Tuple[int, int]:
    """transformers' get_size_with_aspect_ratio: the shorter side to `size` unless the longer side
    would pass `max_size`, in which case the longer side to `max_size` (an image whose shorter side
    already is `size` is left as it is)."""
    raw_size = None
    low, high = float(min(height, width)), float(max(height, width))
    if high / low * size > max_size:
        raw_size = max_size * low / high
        size = int(round(raw_size))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        return (int(raw_size * height / width) if raw_size is not None else int(size * height / width)), size
    return size, (int(raw_size * width / height) if raw_size is not None else int(size * width / height))


def seen_pixels(pixels: np.ndarray, processor: Any) -> np.ndarray:
    """A processor's output (... x 3 x H x W float) undone to the uint8 RGB it shows (... x H x W x 3):
    the normalisation and the rescale reversed where the processor applies them. `processor` is a
    Preprocessor or a transformers image processor (the same attribute names); the explanations'
    overlays and the pretraining figures draw what the model saw through here."""
    values = np.moveaxis(np.asarray(pixels, dtype=np.float32), -3, -1)
    if getattr(processor, "do_normalize", True):
        mean = np.asarray(getattr(processor, "image_mean", None) or _STANDARD, dtype=np.float32)
        std = np.asarray(getattr(processor, "image_std", None) or _STANDARD, dtype=np.float32)
        values = values * std + mean
    if getattr(processor, "do_rescale", True):
        values = values / float(getattr(processor, "rescale_factor", None) or 1 / 255)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)
