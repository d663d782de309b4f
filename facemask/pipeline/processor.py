"""The image processor (resize, crop, normalise) from a checkpoint or built for a random-init
model type, the input side it produces, and the part of an image it turns into that input."""

from __future__ import annotations

from typing import Any, Dict

from transformers import AutoImageProcessor
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import (
    IMAGE_PROCESSOR_MAPPING_NAMES,
    get_image_processor_class_from_name,
)

from facemask.config.schema import ConfigError, ModelConfig, nearest
from facemask.run_folder import PROCESSOR
from facemask.runtime.preprocess import crop_offsets, input_side, resized_shape
from facemask.runtime.source import model_folder

# The PIL backend: torchvision has no CPU build everywhere this runs, and one backend everywhere
# means training, evaluation and the Hub pipeline preprocess identically.
BACKEND = "pil"


def from_config_fields(cfg: ModelConfig) -> tuple[str, Dict[str, Any]]:
    fields = dict(cfg.from_config or {})
    model_type = fields.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"'model.from_config.model_type' is '{model_type}'; {nearest(model_type, CONFIG_MAPPING.keys())}")
    known = CONFIG_MAPPING[model_type]().to_dict()
    for key in fields:
        if key not in known:
            raise ConfigError(f"unknown key 'model.from_config.{key}' for model_type {model_type}; {nearest(key, known)}")
    return model_type, fields


def load_image_processor(cfg: ModelConfig) -> Any:
    overrides = dict(cfg.image_processor or {})
    if cfg.name_or_path is not None:
        try:
            return AutoImageProcessor.from_pretrained(
                cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir, backend=BACKEND, **overrides
            )
        except OSError:
            # A model that cannot be found (offline and not cached, a misspelt id, no access) gets the
            # message predict gives for one, from the resolver that owns it; a found one's error stands.
            model_folder(cfg.name_or_path, cfg.revision, [PROCESSOR.pattern])
            raise
    model_type, fields = from_config_fields(cfg)
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if not names:
        raise ConfigError(f"no image processor is known for model_type {model_type}; set model.name_or_path instead")
    processor_class = get_image_processor_class_from_name(names.get(BACKEND) or next(iter(names.values())))
    image_size = fields.get("image_size", CONFIG_MAPPING[model_type]().image_size)
    # Resize straight to the model's input; checkpoints that centre-crop say so in their own processor.
    defaults: Dict[str, Any] = {"size": {"height": image_size, "width": image_size}, "do_center_crop": False}
    return processor_class(**{**defaults, **overrides})


def _fields(size: Any) -> Dict[str, int]:
    """A size as a plain dict (the processor holds transformers' SizeDict once loaded)."""
    return {k: v for k, v in dict(size or {}).items() if v is not None}


def processor_image_size(processor: Any) -> int:
    crop = bool(getattr(processor, "do_center_crop", False))
    chosen = processor.crop_size if crop else processor.size
    if not hasattr(chosen, "get"):  # an old processor's bare int
        return int(chosen)
    return input_side(_fields(processor.size), _fields(getattr(processor, "crop_size", None)), crop)


def _resized(processor: Any, width: int, height: int) -> tuple[int, int]:
    """(height, width) after the processor's resize: the runtime's geometry (one owner)."""
    if not getattr(processor, "do_resize", True):
        return height, width
    return resized_shape(_fields(processor.size), height, width)


def input_region(processor: Any, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of a width x height image that the processor turns into the model's square input,
    as (left, top, right, bottom) in the image's pixels.

    The whole image for a processor that resizes straight to the square (ViT, BEiT: the image is
    squashed); the source of the centre crop for one that resizes and then centre-crops (DeiT, or
    `do_center_crop` in model.image_processor). Evaluation, predict and export run the processor
    itself; the training paths (the cache's training images, the random crops of both input paths)
    take their geometry from here, so a crop of the whole region is the evaluation input.
    """
    if not getattr(processor, "do_center_crop", False):
        return 0.0, 0.0, float(width), float(height)
    resized_h, resized_w = _resized(processor, width, height)
    crop = _fields(processor.crop_size)
    # Where the crop is larger than the resized image the processor pads with zeros, and training
    # keeps to the image instead.
    top, left = crop_offsets(resized_h, resized_w, crop["height"], crop["width"])
    sx, sy = width / resized_w, height / resized_h
    return (max(0.0, left * sx), max(0.0, top * sy),
            min(float(width), (left + crop["width"]) * sx), min(float(height), (top + crop["height"]) * sy))


def square_resize(processor: Any) -> Dict[str, Any]:
    """Processor arguments that resize an image (a region already cut out) straight to the model's
    square input, without a second centre crop: the training paths' last step."""
    if not getattr(processor, "do_center_crop", False):
        return {}
    side = processor_image_size(processor)
    return {"size": {"height": side, "width": side}, "do_center_crop": False, "do_resize": True}
