"""The image classifier of a run: from a checkpoint with a fresh head, or built from a config
(random init), with the attention kernel this machine can run.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional

import transformers
from transformers import AutoConfig, AutoModelForImageClassification, PreTrainedModel

from facemask import run_folder

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
        if getattr(config, "use_mask_token", False):
            extra["use_mask_token"] = False  # BEiT pretrained here: the classifier has no use for it
        # The checkpoint's head (e.g. 21,843 ImageNet-22k classes, or none) never fits our labels.
        return loading_quietly(AutoModelForImageClassification, cfg, ignore_mismatched_sizes=True, **labels,
                               **overrides, **extra)
    model_type, fields = from_config_fields(cfg)
    config = AutoConfig.for_model(model_type, **fields, **labels)
    check_config_overrides(config, overrides)
    for key, value in overrides.items():
        setattr(config, key, value)
    return AutoModelForImageClassification.from_config(config, **extra)


WEIGHT_FILES = (run_folder.WEIGHTS.name, run_folder.SHARD_INDEX.name, "pytorch_model.bin")


def check_model_folder(cfg: ModelConfig) -> None:
    """A local `model.name_or_path` must hold a model: a pretraining run, a training run or a saved
    checkpoint (config.json and weights). Checked before any work."""
    if cfg.name_or_path is None:
        return
    folder = Path(cfg.name_or_path).expanduser()
    if not folder.is_dir():
        return  # a Hub id (or a path that is not there: from_pretrained says so)
    if run_folder.CONFIG.path(folder).is_file() and any((folder / name).is_file() for name in WEIGHT_FILES):
        return
    unfinished = any(run_folder.CHECKPOINTS.path(folder).parent.glob(run_folder.CHECKPOINTS.name))
    hint = (" It holds checkpoints only: the run has not finished; --resume it, or name one of its checkpoint-N "
            "folders." if unfinished else "")
    raise ConfigError(f"'model.name_or_path' {folder} is neither a pretraining run (python -m facemask pretrain), a "
                      f"training run nor a saved checkpoint: expected {run_folder.CONFIG.name} and "
                      f"{run_folder.WEIGHTS.name} in it.{hint}")


def source_name(name_or_path: str) -> str:
    """A checkpoint as a log line or a card names it: a Hub id, or a local folder's name with what
    it is (never its path)."""
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        return name_or_path
    if run_folder.PRETRAINING.path(folder).is_file():
        kind = "pretraining run"
    elif run_folder.RUN_INFO.path(folder).is_file():
        kind = "training run"
    else:
        kind = "local checkpoint"
    return f"{folder.resolve().name} ({kind})"


def _grouped(keys: Iterable[str], base: str = "") -> str:
    """Tensors counted by module: `decoder`, `classifier`, or within the encoder (`base`) `beit.pooler`."""
    tops = Counter(".".join(key.split(".")[:2 if key.split(".")[0] == base else 1]) for key in keys)
    return ", ".join(f"{top} ({n} tensor{'s' if n != 1 else ''})" for top, n in sorted(tops.items()))


def load_report(source: str, model: PreTrainedModel, info: Dict[str, Any]) -> str:
    """transformers' load report as one line: what came from the checkpoint, what was left out
    (a pretraining head, the mask token, another head) and what is new."""
    missing, unexpected = set(info.get("missing_keys") or ()), set(info.get("unexpected_keys") or ())
    mismatched = {m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or ()}
    loaded = len([k for k in model.state_dict() if k not in missing and k not in mismatched])
    mask_token = {k for k in unexpected if k.endswith("mask_token")}
    head = unexpected - mask_token
    parts = [f"loaded {loaded} tensors from {source}"]
    left = ([f"the checkpoint's head: {_grouped(head)}"] if head else []) + (["the mask token"] if mask_token else [])
    if left:
        parts.append("left out " + " and ".join(left))
    new_token = {k for k in missing if k.endswith("mask_token")}
    fresh = (missing | mismatched) - new_token
    new = ([_grouped(fresh, getattr(model, "base_model_prefix", ""))] if fresh else []) + \
        (["the mask token"] if new_token else [])
    if new:
        parts.append("new: " + " and ".join(new))
    return "; ".join(parts)


@contextmanager
def _transformers_quiet() -> Iterator[None]:
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)


def loading_quietly(cls: Any, cfg: ModelConfig, **kwargs: Any) -> PreTrainedModel:
    """`cls.from_pretrained(model.name_or_path)` with transformers' load report (which shows a
    pretraining head and mask token as UNEXPECTED, at warning level) replaced by one line."""
    with _transformers_quiet():
        model, info = cls.from_pretrained(cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir,
                                          output_loading_info=True, **kwargs)
    for message in info.get("error_msgs") or ():
        logger.warning("loading %s: %s", cfg.name_or_path, message)
    logger.info(load_report(source_name(cfg.name_or_path), model, info))
    return model
