"""The splits as the Trainer reads them: the cached path (uint8 cache, batches augmented on the
device) or the per-image path (PIL transforms per sample), for training and for evaluation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from transformers import TrainerCallback, TrainingArguments

from facemask.config.schema import ExperimentConfig
from facemask.data.sources import PreparedData
from facemask.data.storage import cache_root, machine_by_machine
from facemask.pipeline.augment import BatchTransform
from facemask.pipeline.cache import CacheReport, CacheSpec, build_or_load, collate_cached
from facemask.pipeline.geometry import INDEX_COLUMN, AugmentationClock
from facemask.pipeline.per_image import collate, make_transforms

logger = logging.getLogger("facemask")


class AugmentationEpochCallback(TrainerCallback):
    """Moves the augmentation clock to the epoch being trained, also when resuming mid-epoch."""

    def __init__(self, clock: AugmentationClock) -> None:
        self.clock = clock

    def on_epoch_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.epoch = int(state.epoch + 1e-6)  # a resumed 4.6 is epoch 4; a computed 3.9999 is 4


@dataclass
class InputPipeline:
    """The splits as the Trainer reads them, and what turns their batches into model inputs."""

    splits: Dict[str, Any]
    collate: Callable
    clock: AugmentationClock
    batch_transform: Optional[BatchTransform] = None
    cache_reports: List[CacheReport] = field(default_factory=list)


def attach_transforms(data: PreparedData, processor: Any, cfg: ExperimentConfig) -> InputPipeline:
    """The per-image path: every epoch opens, converts and resizes each image with PIL."""
    clock = AugmentationClock(cfg.seed)
    train_tf, eval_tf = make_transforms(processor, cfg.data, data.image_column, data.label_column, clock)
    splits = dict(data.splits)
    splits["train"] = splits["train"].add_column(INDEX_COLUMN, list(range(len(splits["train"]))))
    # New dataset objects: data.splits stay plain (the analysis after training reads their files).
    splits = {split: ds.with_transform(train_tf if split == "train" else eval_tf) for split, ds in splits.items()}
    return InputPipeline(splits, collate, clock)


def cached_inputs(data: PreparedData, processor: Any, cfg: ExperimentConfig,
                  args: Optional[TrainingArguments] = None) -> InputPipeline:
    """The cached path: each split decoded once into a uint8 cache (built by the main process
    while the others wait, then read by all: storage.machine_by_machine), augmented and
    normalised per batch."""
    from contextlib import nullcontext

    from facemask.pipeline.processor import processor_image_size

    d = cfg.data
    root = cache_root(d.preprocess_dir)
    clock = AugmentationClock(cfg.seed)
    splits, reports = {}, []
    for split, ds in data.splits.items():
        spec = CacheSpec.for_split(processor, train=split == "train" and d.augment, scale=d.preprocess_scale)
        waiting = machine_by_machine(args) if args is not None else nullcontext()
        with waiting:
            splits[split], report = build_or_load(ds, split, data.image_column, data.label_column, spec, processor,
                                                  root, d.preprocess_num_proc, data.images_digest(split))
        logger.info(report.describe())
        reports.append(report)
    transform = BatchTransform(processor, d, processor_image_size(processor), clock)
    return InputPipeline(splits, collate_cached, clock, transform, reports)


def eval_batches(processor: Any, preprocess: str) -> tuple[Callable, Optional[BatchTransform]]:
    """The collate function and device-batch transform an evaluation Trainer needs for inputs made
    by `eval_view`: the cache's uint8 batches are normalised on the device; per-image ones arrive ready."""
    from facemask.config.schema import DataConfig
    from facemask.pipeline.processor import processor_image_size

    if preprocess == "cache":
        return collate_cached, BatchTransform(processor, DataConfig(), processor_image_size(processor))
    return collate, None


def eval_view(ds: Any, split: str, image_column: str, label_column: str, processor: Any, preprocess: str,
              preprocess_dir: Optional[str] = None, num_proc: Optional[int] = None,
              args: Optional[TrainingArguments] = None) -> Any:
    """An evaluation split in the form a Trainer with this input pipeline predicts on: through the
    preprocessing cache (built by the main process while the others wait), or the per-image
    transform. train.py's counterfactual copies and evaluate.py's splits both come through here."""
    from contextlib import nullcontext

    from facemask.config.schema import DataConfig

    if preprocess == "per_image":
        _, eval_tf = make_transforms(processor, DataConfig(), image_column, label_column)
        return ds.with_transform(eval_tf)
    spec = CacheSpec.for_split(processor, train=False)
    waiting = machine_by_machine(args) if args is not None else nullcontext()
    with waiting:
        cached, report = build_or_load(ds, split, image_column, label_column, spec, processor,
                                       cache_root(preprocess_dir), num_proc)
    logger.info(report.describe())
    return cached


def prepare_inputs(data: PreparedData, processor: Any, cfg: ExperimentConfig,
                   args: Optional[TrainingArguments] = None) -> InputPipeline:
    if cfg.data.preprocess == "per_image":
        return attach_transforms(data, processor, cfg)
    return cached_inputs(data, processor, cfg, args)
