"""Pretrain a ViT/BEiT encoder by masked image modelling (SimMIM) on images without labels.

    python pretrain.py configs/pretrain-quickstart.yaml [section.key=value ...]
        [--resume [CHECKPOINT] | --overwrite] [--force]
    python -m facemask pretrain configs/pretrain-quickstart.yaml
    python train.py configs/quickstart.yaml model.name_or_path=outputs/pretrain-quickstart

The images come from the config's data section (class folders allowed, their labels unused). The
run folder is a backbone: `model.name_or_path=FOLDER` fine-tunes it with a fresh classification
head, and that run checks its test images against the images pretraining used (data.on_leak).
--resume, --overwrite, --force, SIGTERM and the run lock behave as in train.py.
"""

# The run goes through the set-up train.py uses (training/setup.py); what makes its folder a
# backbone: the model and image processor, pretraining.json, the digests of the images used, and
# the figures its card shows. The training stack is imported only once the config is read.

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np

from facemask import run_folder
from facemask.config.loading import load_config
from facemask.training.resume import RunLock, add_run_arguments, parse_args, stop_on_sigterm
from facemask.training.run import run_cli

if TYPE_CHECKING:
    from facemask.training.masked_modeling import PretrainingTrainer
    from facemask.training.setup import RunSetup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def command(args: argparse.Namespace) -> int:
    """`python -m facemask pretrain`: `python pretrain.py` with the same arguments."""
    return run_cli(main, args.argv)


def cli(argv: Optional[List[str]] = None) -> int:
    """`python pretrain.py`: 0 done, 2 a config or input error (before any work), 1 a failure."""
    return run_cli(main, argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Pretrain, save the encoder, its record, figures and card; returns pretraining.json's record."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, __doc__)
    cfg = load_config(args.config, args.overrides)  # before the training stack: a misspelled key at once
    from facemask.publish.card import write_card
    from facemask.publish.hub import check_write_access, push_run
    from facemask.training.arguments import logger
    from facemask.training.masked_modeling import check_pretraining
    from facemask.training.setup import RunSetup

    check_pretraining(cfg)  # a model or masking that cannot pretrain fails before the folder is touched
    run = RunSetup.start(cfg)
    with stop_on_sigterm(), ExitStack() as held:
        if run.main_process:
            held.enter_context(RunLock(cfg.output_dir, force=args.force))
            if cfg.hub.push:
                logger.info("will push to %s as %s", cfg.hub.model_id, check_write_access("hub.push=true"))
        record = pretrain(run, args, argv, held)
        if run.main_process:
            logger.info("model card: %s", write_card(cfg.output_dir))
            if cfg.hub.push:
                logger.info("pushed to %s", push_run(cfg.output_dir, cfg.hub.model_id, cfg.hub.private,
                                                     cfg.hub.revision))
            logger.info("pretrained encoder in %s; fine-tune it with: python train.py CONFIG model.name_or_path=%s",
                        cfg.output_dir, cfg.output_dir)
        return record


def pretrain(run: RunSetup, args: Any, argv: List[str], held: ExitStack) -> Dict[str, Any]:
    """Train the encoder and write the run folder; returns pretraining.json's record."""
    from facemask.config.dump import to_yaml
    from facemask.data.audit import check_audit
    from facemask.training.arguments import log_batch_size, log_file, logger
    from facemask.training.provenance import run_info, write_run_record
    from facemask.training.resume import claim_output_dir

    cfg = run.cfg
    checkpoint = claim_output_dir(cfg.output_dir, args.resume, args.overwrite, run.main_process)
    if run.main_process:
        held.enter_context(log_file(cfg.output_dir))
    log_batch_size(run.args)
    prepared = run.load_data(labelled=False)
    if prepared.report is not None:
        check_audit(prepared.report, cfg.output_dir, run.main_process)
    # Before training, so that a model fine-tuned from one of this run's checkpoints (or from a run
    # that was stopped) can check its test images against them too.
    recorded = _write_images_used(run, prepared) if run.main_process else 0
    info = run_info(argv, prepared.data, run.args, cfg, prepared.inspections)
    trainer: PretrainingTrainer = run.build_pretraining()  # type: ignore[assignment]
    splits = {name: len(ds) for name, ds in prepared.data.splits.items() if name in ("train", "validation")}
    logger.info("pretraining %s (%s, mask ratio %s, mask patches of %d px) on %s: %s images", run.model_description,
                cfg.pretrain.objective, cfg.pretrain.mask_ratio, cfg.pretrain.mask_patch_size, prepared.data.source,
                splits)
    info["preprocessing"] = [cache.__dict__ for cache in run.pipeline.cache_reports]
    if run.main_process:
        write_run_record(cfg.output_dir, info, to_yaml(cfg), resuming=checkpoint is not None)
    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    start = time.process_time()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    record = {}
    if run.main_process:
        record = _record(run, splits, recorded, metrics, time.process_time() - start)
        _figures(trainer, run, cfg.output_dir)
    return record


def _public_source(run: RunSetup) -> str:
    """The data by name, never a local path."""
    from facemask.data.sources import folder_source

    d = run.cfg.data
    return folder_source(d.train_dir)["name"] if d.train_dir else run.prepared.data.source


def _record(run: RunSetup, splits: Dict[str, int], recorded: int, metrics: Dict[str, Any],
            cpu_seconds: float) -> Dict[str, Any]:
    from facemask.training.modeling import source_name

    cfg, config = run.cfg, run.model.config
    record = {
        "objective": cfg.pretrain.objective,
        "model_type": config.model_type,
        "head": type(run.model).__name__,
        "mask_ratio": cfg.pretrain.mask_ratio,
        "mask_patch_size": cfg.pretrain.mask_patch_size,
        "patch_size": int(config.patch_size),
        "image_size": int(config.image_size),
        "started_from": source_name(cfg.model.name_or_path) if cfg.model.name_or_path else "random init",
        "data": _public_source(run),
        "images": splits,
        "images_recorded": recorded,
        "train_loss": metrics.get("train_loss"),
        "eval_loss": metrics.get("eval_loss"),
        "epochs": metrics.get("epoch"),
        "train_seconds": metrics.get("train_runtime"),
        "cpu_seconds": round(cpu_seconds, 1),
    }
    run_folder.write_json(run_folder.PRETRAINING.path(cfg.output_dir), record)
    return record


def _write_images_used(run: RunSetup, prepared: Any) -> int:
    """pretraining_images.txt: the digests of the training and validation images; how many."""
    from facemask.data.seen import write_seen_images
    from facemask.training.arguments import logger

    if not prepared.inspections:
        logger.warning("data.audit is false: %s lists no images, so a run fine-tuned from this one cannot check its "
                       "test images against them", run_folder.PRETRAINING_IMAGES.name)
        return 0
    used = [f.sha256 for name in ("train", "validation") for f in prepared.inspections.get(name, [])]
    return write_seen_images(run.cfg.output_dir, used)


def _figures(trainer: PretrainingTrainer, run: RunSetup, output_dir: Path) -> None:
    """The loss curve, and held-out images masked beside their reconstructions."""
    from facemask.evaluation.figures import reconstructions_png, training_curves_png
    from facemask.runtime.preprocess import seen_pixels

    training_curves_png(trainer.state.log_history, run_folder.PRETRAINING_LOSS_FIGURE.path(output_dir))
    count = run.cfg.pretrain.reconstructions
    if count == 0:
        return
    shown = trainer.reconstruct(count)
    patch = int(run.model.config.patch_size)
    rows = []
    for pixels, mask, rebuilt in zip(shown["pixel_values"].numpy(), shown["mask"].numpy(),
                                     shown["reconstruction"].numpy()):
        side = pixels.shape[-1] // patch
        hidden = mask.reshape(side, side).repeat(patch, 0).repeat(patch, 1)[None]
        original, filled = seen_pixels(np.stack([pixels, np.where(hidden, rebuilt, pixels)]), run.processor)
        # The hidden patches drawn mid-grey.
        masked = np.where(hidden[0, :, :, None], np.uint8(128), original)
        rows.append((original, masked, filled))
    reconstructions_png(rows, run_folder.RECONSTRUCTIONS_FIGURE.path(output_dir))
