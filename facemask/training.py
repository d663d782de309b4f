"""Pieces of a training run that train.py puts together: arguments, datasets with transforms, Trainer."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from typing import Any, Dict, List, Optional

from transformers import Trainer, TrainingArguments

from .config import ConfigError, ExperimentConfig
from .data import PreparedData, collate, make_transforms, resolve_positive_label
from .metrics import make_compute_metrics

logger = logging.getLogger("facemask")

# Defaults this project needs whatever the config says: the image column must reach the
# transform, and `labels` is our collator's key.
_TRAINING_DEFAULTS: Dict[str, Any] = {"remove_unused_columns": False, "label_names": ["labels"]}


class FaceMaskTrainer(Trainer):
    """Trainer whose checkpoint reloads go through `from_pretrained`.

    transformers 5 saves checkpoints under the original (Hub) parameter names but reloads the best
    model and resumed checkpoints with a plain non-strict `load_state_dict`, so for ViT every
    encoder weight is reported missing and silently left as it was (huggingface/transformers#43701).
    `from_pretrained` applies the name conversion; the weights are then copied in strictly.
    """

    def _reload(self, checkpoint: str, model: Any) -> None:
        target = self.accelerator.unwrap_model(model)
        loaded = type(target).from_pretrained(checkpoint)
        target.load_state_dict(loaded.state_dict(), strict=True)
        logger.info("loaded weights from %s", checkpoint)

    def _plain_checkpoint(self, checkpoint: Optional[str]) -> bool:
        return (
            checkpoint is not None
            and os.path.isfile(os.path.join(checkpoint, "config.json"))
            and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self._plain_checkpoint(resume_from_checkpoint):
            self._reload(resume_from_checkpoint, model if model is not None else self.model)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self._plain_checkpoint(self.state.best_model_checkpoint):
            self._reload(self.state.best_model_checkpoint, self.model)
        else:
            super()._load_best_model()


def parse_args(argv: Optional[List[str]], description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="experiment YAML file, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=3e-5")
    return parser.parse_args(argv)


def training_arguments(cfg: ExperimentConfig) -> TrainingArguments:
    if cfg.training.get("remove_unused_columns"):
        raise ConfigError("'training.remove_unused_columns' must stay false: the image column feeds the transform")
    try:
        return TrainingArguments(**{**_TRAINING_DEFAULTS, **cfg.training})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training: {err}") from None


def run_info(argv: List[str], data: PreparedData, args: TrainingArguments) -> Dict[str, Any]:
    """What the card needs to say about a run and that its other files do not hold."""
    import platform

    import accelerate
    import datasets
    import huggingface_hub
    import torch
    import transformers

    from . import __version__
    from .card import redact
    from .data import class_counts
    from .metrics import evaluate

    return {
        "command": redact(" ".join(["python", "train.py", *map(shlex.quote, argv)])),
        "world_size": args.world_size,
        "data": {
            "source": data.source,
            "labels": data.labels,
            "splits": {
                split: {"num_images": len(ds), "class_counts": class_counts(ds, data.label_column, data.labels)}
                for split, ds in data.splits.items()
            },
        },
        "versions": {
            "Python": platform.python_version(), "PyTorch": torch.__version__, "Transformers": transformers.__version__,
            "Datasets": datasets.__version__, "Evaluate": evaluate.__version__, "Accelerate": accelerate.__version__,
            "huggingface_hub": huggingface_hub.__version__, "facemask": __version__,
        },
    }


def setup_logging(args: TrainingArguments) -> None:
    level = logging.INFO if args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level)
    logger.setLevel(level)


def attach_transforms(data: PreparedData, processor: Any, cfg: ExperimentConfig) -> None:
    train_tf, eval_tf = make_transforms(processor, cfg.data, data.image_column, data.label_column)
    for split, ds in data.splits.items():
        ds.set_transform(train_tf if split == "train" else eval_tf)


def build_trainer(
    model: Any, args: TrainingArguments, data: PreparedData, processor: Any, cfg: ExperimentConfig
) -> FaceMaskTrainer:
    pos_label = resolve_positive_label(data.labels, cfg.data.positive_label)
    return FaceMaskTrainer(
        model=model,
        args=args,
        train_dataset=data.splits["train"],
        eval_dataset=data.splits.get("validation"),
        data_collator=collate,
        processing_class=processor,
        compute_metrics=make_compute_metrics(pos_label),
    )
