"""The image classifier of a run: from a checkpoint with a fresh head, or built from a config
(random init), with the attention kernel this machine can run.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

from facemask.config.schema import ConfigError, ModelConfig, nearest
from facemask.pipeline.processor import from_config_fields
from facemask.training.performance import attention_implementation

logger = logging.getLogger("facemask")


def build_model(cfg: ModelConfig, id2label: Dict[int, str], label2id: Dict[str, int],
                gpu: bool = False) -> PreTrainedModel:
    """A classifier with a fresh head of len(id2label) outputs (with `model.peft`: wrapped with
    adapters, only they and the head trainable)."""
    labels = {"num_labels": len(id2label), "id2label": id2label, "label2id": label2id}
    attention, notes = attention_implementation(cfg.attn_implementation, gpu)
    for note in notes:
        logger.warning(note)
    try:
        model = _build(cfg, labels, attention)
    except (ValueError, ImportError) as err:
        if attention is None or "attn" not in str(err).lower() and "attention" not in str(err).lower():
            raise
        logger.warning("model.attn_implementation=%s is not available for this model (%s): using the default",
                       attention, str(err).splitlines()[0])
        model = _build(cfg, labels, None)
    if cfg.peft is not None:
        from facemask.training.lora import add_adapters

        model = add_adapters(model, cfg.peft)
    return model


def check_config_overrides(config: Any, overrides: Dict[str, Any]) -> None:
    """`model.config_overrides` must name fields of the model's config class: a typo (or
    drop_path_rate on ViT, which has none) would otherwise be stored and silently ignored."""
    known = type(config)().to_dict()
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown key 'model.config_overrides.{key}' for {type(config).__name__} "
                              f"(model_type {config.model_type}); {nearest(key, known)}")


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
    model_type, fields = from_config_fields(cfg)
    config = AutoConfig.for_model(model_type, **fields, **labels)
    check_config_overrides(config, overrides)
    for key, value in overrides.items():
        setattr(config, key, value)
    return AutoModelForImageClassification.from_config(config, **extra)
