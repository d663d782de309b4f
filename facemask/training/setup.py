"""One run set-up, shared by train.py and the search: config -> arguments -> logging -> seed ->
image processor -> data (audited, split) -> the inputs the Trainer reads -> model -> Trainer.

    run = RunSetup.start(cfg)     # arguments and logging: nothing read or written yet
    run.load_data()               # seed, processor, data (the main process first, the others read what it kept)
    run.build()                   # inputs, model (or model_init) and the Trainer

Between the steps a caller does what is its own: train.py claims the run folder after `start`
and checks the data audit after `load_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from transformers import TrainingArguments, set_seed

from facemask.config.schema import ConfigError, ExperimentConfig
from facemask.data.corrections import Corrections, read_corrections
from facemask.data.exclude import ExcludeList, read_exclude_list
from facemask.data.prepare import Prepared, prepare_data
from facemask.data.seen import read_seen_images
from facemask.data.storage import cache_root, machine_by_machine, remove_stale_partials
from facemask.pipeline.inputs import InputPipeline, prepare_inputs
from facemask.pipeline.processor import load_image_processor, processor_image_size
from facemask.recipe.distill import check_teacher, teacher_labels, teacher_name
from facemask.training.arguments import setup_logging, training_arguments
from facemask.training.masked_modeling import build_pretraining_model, build_pretraining_trainer
from facemask.training.modeling import build_model, check_model_folder
from facemask.training.performance import uses_gpu
from facemask.training.trainer import FaceMaskTrainer, build_trainer


def sharded(args: TrainingArguments) -> bool:
    """Whether the launch shards the model (FSDP or DeepSpeed, from the config or accelerate launch)."""
    import os

    env = any(os.environ.get(key, "").lower() in ("1", "true") for key in ("ACCELERATE_USE_FSDP",
                                                                             "ACCELERATE_USE_DEEPSPEED"))
    return env or bool(getattr(args, "fsdp", None)) or bool(getattr(args, "deepspeed", None))


@dataclass
class RunSetup:
    cfg: ExperimentConfig
    args: TrainingArguments
    processor: Any = None
    prepared: Optional[Prepared] = None
    pipeline: Optional[InputPipeline] = None
    model: Any = None
    trainer: Optional[FaceMaskTrainer] = None
    exclude: Optional[ExcludeList] = None  # data.exclude's list, read (and checked) by `start`
    corrections: Optional[Corrections] = None  # data.corrections' file, read (and checked) by `start`

    @classmethod
    def start(cls, cfg: ExperimentConfig) -> "RunSetup":
        args = training_arguments(cfg)
        setup_logging(args)
        if cfg.model.peft is not None and sharded(args):
            raise ConfigError("'model.peft' under FSDP or DeepSpeed is not supported: the adapter is saved and merged "
                              "from whole weights, which a sharded run does not hold on any one process; launch "
                              "with DDP (configs/accelerate/multi-gpu.yaml or multi-node.yaml): LoRA's frozen weights "
                              "need no optimizer state to shard")
        if cfg.recipe.ema_decay is not None and sharded(args):
            raise ConfigError("'recipe.ema_decay' under FSDP or DeepSpeed is not supported: each process holds a "
                              "shard, so the average would be of that shard alone, saved and reloaded as if "
                              "whole; launch with DDP, or remove recipe.ema_decay")
        if cfg.recipe.distill is not None:
            # A missing teacher, or one of another number of classes, costs seconds, not a data audit.
            labels = teacher_labels(cfg.recipe.distill)
            expected = cfg.data.expected_labels
            if len(labels) != expected:
                raise ConfigError(f"'recipe.distill.teacher' {teacher_name(cfg.recipe.distill.teacher)!r} predicts "
                                  f"{len(labels)} classes ({labels}); this run has {expected}: distil from a teacher "
                                  "trained on the same classes")
        check_model_folder(cfg.model)
        # A bad list costs seconds, not a data audit (and fails before --overwrite clears a run folder).
        exclude = read_exclude_list(cfg.data.exclude) if cfg.data.exclude is not None else None
        corrections = read_corrections(cfg.data.corrections) if cfg.data.corrections is not None else None
        return cls(cfg, args, exclude=exclude, corrections=corrections)

    @property
    def main_process(self) -> bool:
        return self.args.process_index == 0

    @property
    def model_description(self) -> str:
        """The checkpoint, or the random-init model type, for the run's first line."""
        m = self.cfg.model
        return m.name_or_path or f"a random-init {m.from_config['model_type']} model"

    @property
    def image_side(self) -> int:
        return processor_image_size(self.processor)

    def load_data(self, labelled: bool = True) -> Prepared:
        """`labelled=False`: pretraining's images, any classes (their labels are not used)."""
        if self.args.local_process_index == 0:
            # What a killed run left half-written under the cache root goes before this one adds to it.
            remove_stale_partials(cache_root(self.cfg.data.preprocess_dir))
        set_seed(self.args.seed)
        self.processor = load_image_processor(self.cfg.model)
        with machine_by_machine(self.args):
            # The main process draws (synthetic), inspects and keeps; the others then read what it kept
            # (another machine's first process keeps its own where the machines share no storage).
            # A run fine-tuned from a pretraining run checks its test images against the images that run used.
            seen = read_seen_images(self.cfg.model.name_or_path, self.cfg.model.revision) if labelled else None
            self.prepared = prepare_data(self.cfg.data, self.args.seed, self.image_side, self.exclude, labelled, seen,
                                         self.corrections)
        if self.cfg.recipe.distill is not None:
            check_teacher(self.cfg.recipe.distill, self.prepared.data.labels)  # names and order, before the model
        return self.prepared

    def build(self, model_init: Optional[Callable[..., Any]] = None) -> FaceMaskTrainer:
        """The inputs, then the model (unless `model_init` builds one per trial), then the Trainer."""
        data = self.prepared.data
        if model_init is None:
            self.model = build_model(self.cfg.model, data.id2label, data.label2id, gpu=uses_gpu(self.cfg.training))
        self.pipeline = prepare_inputs(data, self.processor, self.cfg, self.args)
        self.trainer = build_trainer(self.model, self.args, data, self.processor, self.cfg, self.pipeline,
                                     model_init=model_init)
        if model_init is None:
            self.trainer.require_checkpoint_space()  # before any training, not at the first save
        return self.trainer

    def build_pretraining(self) -> FaceMaskTrainer:
        """The inputs, the encoder with its masked-image-modelling head, and their Trainer."""
        self.model = build_pretraining_model(self.cfg)
        self.pipeline = prepare_inputs(self.prepared.data, self.processor, self.cfg, self.args)
        self.trainer = build_pretraining_trainer(self.model, self.args, self.pipeline, self.processor, self.cfg)
        self.trainer.require_checkpoint_space()
        return self.trainer
