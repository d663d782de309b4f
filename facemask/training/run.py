"""Fine-tune a ViT/BEiT face-mask classifier.

    python train.py configs/quickstart.yaml [section.key=value ...] [--resume [CHECKPOINT] | --overwrite] [--force]
    python -m facemask train configs/quickstart.yaml [...]       (the same; facemask train where installed)
    accelerate launch train.py configs/vit-base-facemask.yaml

A training.output_dir that already holds a run is never reused silently: --resume continues it
from its latest checkpoint (or from CHECKPOINT), --overwrite deletes it and starts over. A folder
locked by a live run is never taken: one of another host only once its heartbeat is stale, or with
--force (docs/distributed.md). SIGTERM (a SLURM time limit, `docker stop`) stops the run with exit
status 143, its folder unlocked and its checkpoints kept. CONFIG that is not a file names a config
the package carries (configs/quickstart.yaml from any folder).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.training.resume import RunLock, add_run_arguments, parse_args, stop_on_sigterm

if TYPE_CHECKING:
    from facemask.training.setup import RunSetup

# The failures of a run that are not the user's input (exit code 1): a push the Hub refused, a
# checkpoint that cannot be saved or read. By name, so that reporting them imports nothing.
FAILURES = {("facemask.publish.hub", "PushError"), ("facemask.training.trainer", "CheckpointError")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def command(args: argparse.Namespace) -> int:
    """`python -m facemask train`: `python train.py` with the same arguments."""
    return run_cli(main, args.argv)


def run_cli(entry: Callable[[Optional[List[str]]], Any], argv: Optional[List[str]] = None) -> int:
    """A run's entry point as a command (train.py, pretrain.py, their subcommands): 0 done, 2 a
    config or input error (found before any work), 1 a failure of the run."""
    try:
        entry(argv)
    except Exception as err:
        failure = any((c.__module__, c.__qualname__) in FAILURES for c in type(err).__mro__)
        if not isinstance(err, ConfigError) and not failure:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1 if failure else 2
    return 0


def cli(argv: Optional[List[str]] = None) -> int:
    """`python train.py`."""
    return run_cli(main, argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    """Train, evaluate on validation (and test), save model, results and card; returns the metrics."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, __doc__)
    # Its keys are checked before the training stack is imported (torch: seconds), so that a
    # misspelled key is reported at once.
    cfg = load_config(args.config, args.overrides)
    from facemask.training.setup import RunSetup

    run = RunSetup.start(cfg)
    with stop_on_sigterm(), ExitStack() as held:
        if run.main_process:
            # Before --overwrite or --resume touch the folder; the other processes of a distributed run share it.
            held.enter_context(RunLock(cfg.output_dir, force=args.force))
        return train(run, args, argv, held)


def train(run: RunSetup, args: Any, argv: List[str], held: ExitStack) -> Dict[str, Dict[str, float]]:
    from facemask.config.dump import to_yaml
    from facemask.data.audit import check_audit
    from facemask.data.seen import write_run_images
    from facemask.publish.card import write_card
    from facemask.publish.hub import check_write_access, push_run
    from facemask.run_folder import TRAIN_TEXT_LOG
    from facemask.training.arguments import log_batch_size, log_dataloader, log_file, logger
    from facemask.training.final_evaluation import evaluate_trained
    from facemask.training.lora import adapter_record, merge_for_saving
    from facemask.training.performance import switches_record
    from facemask.training.provenance import run_info, write_run_record
    from facemask.training.resume import claim_output_dir
    from facemask.training.trainer import early_stopping_record

    cfg = run.cfg
    if cfg.hub.push and run.main_process:
        # Before anything else: a missing or read-only token should cost seconds, not a GPU-day.
        logger.info("will push to %s as %s", cfg.hub.model_id, check_write_access("hub.push=true"))
    checkpoint = claim_output_dir(cfg.output_dir, args.resume, args.overwrite, run.main_process)
    if run.main_process:
        held.enter_context(log_file(cfg.output_dir))
    log_batch_size(run.args)
    log_dataloader(cfg, run.args)

    prepared = run.load_data()
    logger.info("training %s on %s; outputs go to %s", run.model_description, prepared.data.source, cfg.output_dir)
    if "validation" not in prepared.data.splits and run.args.eval_strategy != "no":
        raise ConfigError("there is no validation split: set data.validation_split > 0 or training.eval_strategy=no")
    if prepared.report is not None:
        check_audit(prepared.report, cfg.output_dir, run.main_process)
    info = run_info(argv, prepared.data, run.args, cfg, prepared.inspections)
    for split, summary in info["data"]["splits"].items():
        logger.info("%s: %d images %s", split, summary["num_images"], summary["class_counts"])
    trainer = run.build()
    asked = {**cfg.training, "attn_implementation": cfg.model.attn_implementation}
    info["switches"] = switches_record(asked, run.args, run.model)
    info["preprocessing"] = [cache.__dict__ for cache in run.pipeline.cache_reports]
    if cfg.model.peft is not None:
        info["peft"] = adapter_record(run.model, cfg.model.peft)
    if run.main_process:
        write_run_record(cfg.output_dir, info, to_yaml(cfg), resuming=checkpoint is not None)
        write_run_images(cfg.output_dir, prepared.inspections)

    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    if cfg.model.peft is not None:
        merge_for_saving(trainer)
    trainer.save_model()
    metrics = {**train_result.metrics, **prepared.removed, **early_stopping_record(trainer)}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    evaluated = evaluate_trained(run)

    if run.main_process:
        logger.info("model card: %s", write_card(cfg.output_dir))
        if cfg.hub.push:
            logger.info("pushed to %s", push_run(cfg.output_dir, cfg.hub.model_id, cfg.hub.private, cfg.hub.revision))
        logger.info("outputs in %s (docs/outputs.md says what each file holds; the full log is %s)", cfg.output_dir,
                    TRAIN_TEXT_LOG.name)
    return {"train": metrics, **{e.prefix: e.metrics for e in evaluated.values()}}
