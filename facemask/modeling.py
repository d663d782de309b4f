"""Image classifier and image processor, from a checkpoint or built from a config (random init)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.image_processing_auto import (
    IMAGE_PROCESSOR_MAPPING_NAMES,
    get_image_processor_class_from_name,
)

from .config import ConfigError, ModelConfig, _nearest
from .performance import attention_implementation

logger = logging.getLogger("facemask")


# The PIL backend: torchvision has no CPU build everywhere this runs, and one backend everywhere
# means training, evaluation and the Hub pipeline preprocess identically.
BACKEND = "pil"


def _from_config_fields(cfg: ModelConfig) -> tuple[str, Dict[str, Any]]:
    fields = dict(cfg.from_config or {})
    model_type = fields.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"'model.from_config.model_type' is '{model_type}'; {_nearest(model_type, CONFIG_MAPPING.keys())}")
    known = CONFIG_MAPPING[model_type]().to_dict()
    for key in fields:
        if key not in known:
            raise ConfigError(f"unknown key 'model.from_config.{key}' for model_type {model_type}; {_nearest(key, known)}")
    return model_type, fields


def load_image_processor(cfg: ModelConfig) -> Any:
    overrides = dict(cfg.image_processor or {})
    if cfg.name_or_path is not None:
        return AutoImageProcessor.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir, backend=BACKEND, **overrides
        )
    model_type, fields = _from_config_fields(cfg)
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if not names:
        raise ConfigError(f"no image processor is known for model_type {model_type}; set model.name_or_path instead")
    processor_class = get_image_processor_class_from_name(names.get(BACKEND) or next(iter(names.values())))
    image_size = fields.get("image_size", CONFIG_MAPPING[model_type]().image_size)
    # Resize straight to the model's input; checkpoints that centre-crop say so in their own processor.
    defaults: Dict[str, Any] = {"size": {"height": image_size, "width": image_size}, "do_center_crop": False}
    return processor_class(**{**defaults, **overrides})


def build_model(cfg: ModelConfig, id2label: Dict[int, str], label2id: Dict[str, int],
                gpu: bool = False) -> PreTrainedModel:
    """A classifier with a fresh head of len(id2label) outputs."""
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}
    attention, notes = attention_implementation(cfg.attn_implementation, gpu)
    for note in notes:
        logger.warning(note)
    try:
        return _build(cfg, labels, attention)
    except (ValueError, ImportError) as err:
        if attention is None or "attn" not in str(err).lower() and "attention" not in str(err).lower():
            raise
        logger.warning("model.attn_implementation=%s is not available for this model (%s): using the default",
                       attention, str(err).splitlines()[0])
        return _build(cfg, labels, None)


def check_config_overrides(config: Any, overrides: Dict[str, Any]) -> None:
    """`model.config_overrides` must name fields of the model's config class: a typo (or
    drop_path_rate on ViT, which has none) would otherwise be stored and silently ignored."""
    known = type(config)().to_dict()
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown key 'model.config_overrides.{key}' for {type(config).__name__} "
                              f"(model_type {config.model_type}); {_nearest(key, known)}")


def _build(cfg: ModelConfig, labels: Dict[str, Any], attention: Optional[str]) -> PreTrainedModel:
    extra = {"attn_implementation": attention} if attention else {}
    overrides = dict(cfg.config_overrides or {})
    if cfg.name_or_path is not None:
        config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir)
        check_config_overrides(config, overrides)
        # The checkpoint's head (e.g. 21,843 ImageNet-22k classes, or none) never fits our labels.
        return AutoModelForImageClassification.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir, ignore_mismatched_sizes=True,
            **labels, **overrides, **extra)
    model_type, fields = _from_config_fields(cfg)
    config = AutoConfig.for_model(model_type, **fields, **labels)
    check_config_overrides(config, overrides)
    for key, value in overrides.items():
        setattr(config, key, value)
    return AutoModelForImageClassification.from_config(config, **extra)


def processor_image_size(processor: Any) -> int:
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    if hasattr(size, "get"):  # a dict, or transformers' SizeDict once the processor is loaded
        return int(size.get("height") or size.get("shortest_edge"))
    return int(size)
