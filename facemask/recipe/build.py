"""The training recipe of a run, from `recipe:` and the training split: what the Trainer applies
(loss targets, class weights, sampler, parameter groups, EMA) and what the card reports.

One module of this package per trick: param_groups.py (weight-decay exemptions, layer-wise decay), loss.py
(smoothing, class weights, soft targets), mixing.py (mixup/CutMix), pipeline/photometric.py (kornia
colour jitter, RandAugment, random erasing), ema.py, balance.py (sampler), distill.py (a teacher's soft targets);
early stopping is transformers' EarlyStoppingCallback, recorded here.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from transformers import EarlyStoppingCallback

from facemask.config.schema import ExperimentConfig, RecipeConfig
from facemask.recipe.loss import class_weights
from facemask.recipe.mixing import Mixer

logger = logging.getLogger("facemask")


@dataclass
class Recipe:
    num_labels: int
    seed: int = 0
    label_smoothing: float = 0.0
    class_weights: Optional[torch.Tensor] = None
    mixer: Optional[Mixer] = None
    layer_decay: Optional[float] = None
    ema: Optional[Dict[str, Any]] = None  # WeightAverage's decay, warmup, every
    sampler_labels: Optional[List[int]] = None  # the training labels, for the balanced sampler
    photometric: Optional[Any] = None  # batch_augment.PhotometricAugment
    teacher: Optional[Any] = None  # distill.Teacher (recipe.distill)


def build_recipe(cfg: ExperimentConfig, labels: List[str], train_labels: List[int], process: int = 0,
                 processor: Any = None) -> Recipe:
    r = cfg.recipe
    photometric = None
    if r.color_jitter or r.rand_augment_n or r.random_erasing or r.corruption_augment:
        from facemask.pipeline.photometric import PhotometricAugment, describe

        photometric = PhotometricAugment(r.color_jitter, r.rand_augment_n, r.rand_augment_m, r.random_erasing,
                                         processor, cfg.seed, process, r.corruption_augment)
        logger.info("batch augmentation after crop and flip: %s", describe(photometric))
    counts = {name: 0 for name in labels}
    for label in train_labels:
        counts[labels[label]] += 1
    weights = class_weights(r.class_weights, labels, counts)
    if weights is not None:
        logger.info("class weights in the loss: %s", {name: round(float(w), 4) for name, w in zip(labels, weights)})
    teacher = None
    if r.distill is not None:
        from facemask.config.validation import augmented
        from facemask.recipe.distill import Teacher

        # By default only on the CPU: on a GPU, moving each batch back to the host to hash it costs
        # about what the teacher's forward pass does.
        on_gpu = torch.cuda.is_available() and not cfg.training.get("use_cpu", False)
        auto = not augmented(cfg) and not on_gpu
        cache = r.distill.cache_logits if r.distill.cache_logits is not None else auto
        teacher = Teacher(r.distill, processor, cache)
    mixer = Mixer(r.mixup_alpha, r.cutmix_alpha, r.mix_prob, r.mix_switch_prob, cfg.seed, process)
    return Recipe(
        num_labels=len(labels), seed=cfg.seed,
        label_smoothing=float(cfg.training.get("label_smoothing_factor") or 0.0),
        class_weights=weights, mixer=mixer if mixer.active else None, layer_decay=r.layer_decay,
        ema={"decay": r.ema_decay, "warmup": r.ema_warmup, "every": r.ema_every} if r.ema_decay else None,
        sampler_labels=list(train_labels) if r.balanced_sampler else None, photometric=photometric,
        teacher=teacher,
    )


def changed_settings(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """The switches of a run's `recipe:` (as experiment.yaml holds it) that differ from their
    defaults: the card's rows."""
    defaults = dataclasses.asdict(RecipeConfig())
    # distill has a section of its own on the card (the teacher by name, never by local path).
    return {key: value for key, value in recipe.items()
            if key in defaults and key != "distill" and value != defaults[key]}


class RecordedEarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping, noting when and why it stopped (train_results.json, the card)."""

    def __init__(self, patience: int, threshold: float) -> None:
        super().__init__(early_stopping_patience=patience, early_stopping_threshold=threshold)
        self.stopped: Optional[Dict[str, Any]] = None

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Dict[str, float], **kwargs: Any) -> None:
        super().on_evaluate(args, state, control, metrics, **kwargs)
        if control.should_training_stop and self.early_stopping_patience_counter >= self.early_stopping_patience:
            self.stopped = {"early_stopped_at_epoch": round(float(state.epoch), 4),
                            "early_stopped_at_step": int(state.global_step)}
            logger.info("early stopping at epoch %.2f (step %d): %s did not improve by more than %g for %d "
                        "evaluations", state.epoch, state.global_step, args.metric_for_best_model,
                        self.early_stopping_threshold, self.early_stopping_patience)
