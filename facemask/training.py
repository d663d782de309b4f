"""Pieces of a training run that train.py puts together: arguments, datasets with transforms, Trainer."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from transformers import Trainer, TrainerCallback, TrainingArguments

from .augment import BatchTransform
from .cache import CacheReport, CacheSpec, build_or_load, cache_root, collate_cached
from .config import ConfigError, ExperimentConfig
from .data import INDEX_COLUMN, AugmentationClock, PreparedData, collate, make_transforms, resolve_positive_label
from .metrics import make_compute_metrics
from .performance import dataloader_settings, hardware_switches, uses_gpu

logger = logging.getLogger("facemask")

# Defaults this project needs whatever the config says: the image column must reach the
# transform, and `labels` is our collator's key.
_TRAINING_DEFAULTS: Dict[str, Any] = {"remove_unused_columns": False, "label_names": ["labels"]}


class FaceMaskTrainer(Trainer):
    """Trainer that turns cached uint8 batches into model inputs on the device, and whose
    checkpoint reloads go through `from_pretrained`.

    transformers 5 saves checkpoints under the original (Hub) parameter names but reloads the best
    model and resumed checkpoints with a plain non-strict `load_state_dict`, so for ViT every
    encoder weight is reported missing and silently left as it was (huggingface/transformers#43701).
    `from_pretrained` applies the name conversion; the weights are then copied in strictly.
    """

    def __init__(self, *args: Any, batch_transform: Optional[BatchTransform] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        if batch_transform is not None:
            # A step's inputs are dropped when it ends, unless metrics are asked to see them.
            batch_transform.reuse_output = "inputs" not in (self.args.include_for_metrics or [])

    def _prepare_inputs(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        if self.batch_transform is not None and "pixels" in inputs:
            # After the move to the device: a GPU crops and normalises its own batches, and the
            # host sends a quarter of the bytes (uint8, not float32).
            inputs = self.batch_transform(inputs, train=self.model.training)
        return inputs

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
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML file, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=3e-5")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue the run in training.output_dir from its latest checkpoint, or from CHECKPOINT")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what training.output_dir holds and start the run over")
    args = parser.parse_args(argv)
    # `--resume section.key=value` would take the override as a checkpoint path: give it back.
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    return args


def latest_checkpoint(output_dir: Path) -> Optional[str]:
    """The newest checkpoint that was written completely: a kill mid-save leaves one without its
    trainer_state.json (the Trainer's last write), which cannot be resumed from."""
    if not output_dir.is_dir():
        return None
    complete = [p for p in output_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
                and p.name.split("-")[-1].isdigit()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def previous_run(output_dir: Path) -> Optional[str]:
    """What an earlier run left in output_dir: 'finished', 'interrupted', or None for nothing."""
    if not output_dir.is_dir():
        return None
    if (output_dir / "train_results.json").is_file():
        return "finished"
    if any(output_dir.glob("checkpoint-*")) or (output_dir / "experiment.yaml").is_file():
        return "interrupted"
    return None


def resolve_resume(output_dir: Path, resume: Optional[str], overwrite: bool) -> Optional[str]:
    """The checkpoint to resume from, None to start afresh; refuses to silently reuse a run folder."""
    if resume == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"--resume: {output_dir} holds no complete checkpoint-* folder to resume from")
        return checkpoint
    if resume:
        if not (Path(resume) / "trainer_state.json").is_file():
            raise ConfigError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json)")
        return resume
    state = previous_run(output_dir)
    if state and not overwrite:
        raise ConfigError(
            f"{output_dir} already holds a {state} run. Pass --resume to continue it from its latest checkpoint "
            "(or --resume CHECKPOINT), or --overwrite to delete it and start over; or choose another "
            "training.output_dir"
        )
    return None


RUN_MARKERS = ("experiment.yaml", "run_info.json", "train_results.json", "all_results.json", "trainer_state.json",
               "data_audit.json")


def overwrite_refusal(output_dir: Path) -> Optional[str]:
    """Why --overwrite must not delete `output_dir`, or None: only an empty folder or one that is
    recognisably a run's (it holds run files or checkpoints), never the working directory, the
    repository, the home folder or a folder holding any of them."""
    target = output_dir.expanduser().resolve()
    protected = {"the current directory": Path.cwd().resolve(), "the home folder": Path.home().resolve(),
                 "this repository": Path(__file__).resolve().parent.parent}
    for name, place in protected.items():
        if target == place or target in place.parents:
            return f"--overwrite would delete {target}, which is {name} or holds it; choose a run's own output folder"
    if not target.is_dir() or not any(target.iterdir()):
        return None
    if any((target / marker).is_file() for marker in RUN_MARKERS) or any(target.glob("checkpoint-*")):
        return None
    return (f"--overwrite: {target} holds files but no run's (no {', '.join(RUN_MARKERS[:3])}, checkpoint-*): "
            "it was not made by train.py, so it is left alone; choose another training.output_dir")


def clear_output_dir(output_dir: Path) -> None:
    """--overwrite: empty a run folder (see overwrite_refusal for what is never deleted)."""
    reason = overwrite_refusal(output_dir)
    if reason:
        raise ConfigError(reason)
    if output_dir.is_dir():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def git_state() -> Dict[str, Any]:
    """The code's commit and whether the working tree differed from it, if it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def data_fingerprint(cfg: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
    """One fingerprint of the images the run read, split by split: the same digest the
    preprocessing cache and the audit are keyed by (bytes, or path, size, mtime and ctime), plus
    where they came from (Hub id and revision, folders, or the generator)."""
    from .cache import images_digest

    d = cfg.data
    per_split = {split: images_digest(ds, data.image_column) for split, ds in data.splits.items()}
    combined = hashlib.sha256(json.dumps(per_split, sort_keys=True).encode()).hexdigest()
    record: Dict[str, Any] = {"images_sha256": combined, "images": sum(len(ds) for ds in data.splits.values())}
    if d.synthetic:
        from . import synthetic

        return {"kind": "synthetic", "num_images": d.synthetic_num_images, "image_size": d.synthetic_image_size,
                "seed": cfg.seed, "generator_sha256": synthetic.generator_digest(), **record}
    if d.dataset_name:
        return {"kind": "hub", "dataset": d.dataset_name, "config": d.dataset_config,
                "revision": d.dataset_revision or "main", **record}
    return {"kind": "folders", **record}


def training_arguments(cfg: ExperimentConfig) -> TrainingArguments:
    """TrainingArguments from the config, with the machine-dependent fields it leaves unset filled
    in, and switches this machine cannot honour (fp16 on CPU, ...) turned off with a warning."""
    if cfg.training.get("remove_unused_columns"):
        raise ConfigError("'training.remove_unused_columns' must stay false: the image column feeds the transform")
    values, notes = hardware_switches(cfg.training)
    for note in notes:
        logger.warning(note)
    values.update(dataloader_settings(cfg.training, cfg.data.preprocess))
    try:
        return TrainingArguments(**{**_TRAINING_DEFAULTS, **values})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training: {err}") from None


def log_dataloader(cfg: ExperimentConfig, args: TrainingArguments) -> None:
    chosen = "set in the config" if "dataloader_num_workers" in cfg.training else (
        f"chosen for {os.cpu_count()} cores, {'GPU' if uses_gpu(cfg.training) else 'CPU'} training; "
        "training.dataloader_* overrides")
    logger.info("input pipeline: %s; DataLoader with %d worker(s), pin_memory=%s, persistent_workers=%s (%s)",
                cfg.data.preprocess, args.dataloader_num_workers, args.dataloader_pin_memory,
                args.dataloader_persistent_workers, chosen)


def gpus_per_process(args: Any) -> int:
    """GPUs one process drives: several when `python train.py` runs on a multi-GPU host (the
    Trainer wraps the model in DataParallel), one under a distributed launch or none on CPU."""
    return max(1, int(getattr(args, "n_gpu", 0) or 0))


def effective_batch_size(args: Any) -> int:
    """Images per optimizer step, in every launch mode: per device x GPUs per process x
    accumulation steps x processes. The log, run_info.json and the card all take it from here."""
    return (args.per_device_train_batch_size * gpus_per_process(args) * args.gradient_accumulation_steps
            * args.world_size)


def log_batch_size(args: TrainingArguments) -> None:
    logger.info(
        "effective batch size %d = %d per device x %d device(s) per process x %d accumulation steps x %d processes; "
        "learning rate %g is used as given, not scaled with the batch size", effective_batch_size(args),
        args.per_device_train_batch_size, gpus_per_process(args), args.gradient_accumulation_steps, args.world_size,
        args.learning_rate)


def run_info(argv: List[str], data: PreparedData, args: TrainingArguments, cfg: ExperimentConfig) -> Dict[str, Any]:
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
        "seed": args.seed,
        "world_size": args.world_size,
        "effective_batch_size": effective_batch_size(args),
        "git": git_state(),
        "data_fingerprint": data_fingerprint(cfg, data),
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
    while the others wait, then read by all), augmented and normalised per batch."""
    from contextlib import nullcontext

    from .modeling import processor_image_size

    d = cfg.data
    root = cache_root(d.preprocess_dir)
    clock = AugmentationClock(cfg.seed)
    splits, reports = {}, []
    for split, ds in data.splits.items():
        spec = CacheSpec.for_split(processor, train=split == "train" and d.augment, scale=d.preprocess_scale)
        waiting = args.main_process_first(desc=f"preprocessing cache ({split})") if args is not None else nullcontext()
        with waiting:
            splits[split], report = build_or_load(ds, split, data.image_column, data.label_column, spec, processor,
                                                  root, d.preprocess_num_proc)
        logger.info(report.describe())
        reports.append(report)
    transform = BatchTransform(processor, d, processor_image_size(processor), clock)
    return InputPipeline(splits, collate_cached, clock, transform, reports)


def eval_view(ds: Any, split: str, image_column: str, label_column: str, processor: Any, preprocess: str,
              preprocess_dir: Optional[str] = None, num_proc: Optional[int] = None,
              args: Optional[TrainingArguments] = None) -> Any:
    """An evaluation split in the form a Trainer with this input pipeline predicts on: through the
    preprocessing cache (built by the main process while the others wait), or the per-image
    transform. train.py's counterfactual copies and evaluate.py's splits both come through here."""
    from contextlib import nullcontext

    from .config import DataConfig

    if preprocess == "per_image":
        _, eval_tf = make_transforms(processor, DataConfig(), image_column, label_column)
        return ds.with_transform(eval_tf)
    spec = CacheSpec.for_split(processor, train=False)
    waiting = args.main_process_first(desc=f"preprocessing cache ({split})") if args is not None else nullcontext()
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


def build_trainer(model: Any, args: TrainingArguments, data: PreparedData, processor: Any, cfg: ExperimentConfig,
                  pipeline: InputPipeline) -> FaceMaskTrainer:
    pos_label = resolve_positive_label(data.labels, cfg.data.positive_label)
    return FaceMaskTrainer(
        model=model,
        args=args,
        train_dataset=pipeline.splits["train"],
        eval_dataset=pipeline.splits.get("validation"),
        data_collator=pipeline.collate,
        processing_class=processor,
        compute_metrics=make_compute_metrics(pos_label),
        callbacks=[AugmentationEpochCallback(pipeline.clock)],
        batch_transform=pipeline.batch_transform,
    )
