"""The image processor (resize, crop, normalise) from a checkpoint or built for a random-init
model type, and the input side it produces."""

from __future__ import annotations

from typing import Any, Dict

from transformers import AutoImageProcessor
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import (
    IMAGE_PROCESSOR_MAPPING_NAMES,
    get_image_processor_class_from_name,
)

from facemask.config.schema import ConfigError, ModelConfig, nearest

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
        return AutoImageProcessor.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir, backend=BACKEND, **overrides
        )
    model_type, fields = from_config_fields(cfg)
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if not names:
        raise ConfigError(f"no image processor is known for model_type {model_type}; set model.name_or_path instead")
    processor_class = get_image_processor_class_from_name(names.get(BACKEND) or next(iter(names.values())))
    image_size = fields.get("image_size", CONFIG_MAPPING[model_type]().image_size)
    # Resize straight to the model's input; checkpoints that centre-crop say so in their own processor.
    defaults: Dict[str, Any] = {"size": {"height": image_size, "width": image_size}, "do_center_crop": False}
    return processor_class(**{**defaults, **overrides})


def processor_image_size(processor: Any) -> int:
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    if hasattr(size, "get"):  # a dict, or transformers' SizeDict once the processor is loaded
        return int(size.get("height") or size.get("shortest_edge"))
    return int(size)
