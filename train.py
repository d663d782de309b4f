"""Fine-tune a ViT/BEiT face-mask classifier.

    python train.py configs/quickstart.yaml [section.key=value ...] [--resume [CHECKPOINT] | --overwrite]
    accelerate launch train.py configs/vit-base-facemask.yaml

A training.output_dir that already holds a run is never reused silently: --resume continues it
from its latest checkpoint (or from CHECKPOINT), --overwrite deletes it and starts over.
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional

from transformers import set_seed

from facemask.config.dump import to_yaml
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.data.audit import flagged_attributes, refusal, write_audit
from facemask.data.prepare import prepare_data
from facemask.data.sources import resolve_positive_label
from facemask.evaluation.analysis import analyse_split, operating_points
from facemask.evaluation.counterfactuals import shortcut_tests
from facemask.evaluation.eval_data import sample_names
from facemask.evaluation.metrics import confusion, softmax
from facemask.pipeline.inputs import eval_view, prepare_inputs
from facemask.pipeline.processor import load_image_processor, processor_image_size
from facemask.publish.card import write_card
from facemask.publish.hub import PushError, check_write_access, push_run
from facemask.training.arguments import log_batch_size, log_dataloader, logger, setup_logging, training_arguments
from facemask.training.modeling import build_model
from facemask.training.performance import switches_record, uses_gpu
from facemask.training.provenance import run_info
from facemask.training.resume import clear_output_dir, overwrite_refusal, parse_args, resolve_resume
from facemask.training.trainer import build_trainer, early_stopping_record

# Trainer's metric prefix for each split, as in transformers' example scripts.
PREFIXES = {"validation": "eval", "test": "test"}


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    """Train, evaluate on validation (and test), save model, results and card; returns the metrics."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, __doc__)
    cfg = load_config(args.config, args.overrides)
    training_args = training_arguments(cfg)
    setup_logging(training_args)
    checkpoint = resolve_resume(cfg.output_dir, args.resume, args.overwrite)
    main_process = training_args.process_index == 0
    if args.overwrite:
        reason = overwrite_refusal(cfg.output_dir)  # on every process, so none goes on alone
        if reason:
            raise ConfigError(reason)
        if main_process:
            clear_output_dir(cfg.output_dir)
    log_batch_size(training_args)
    log_dataloader(cfg, training_args)
    if cfg.hub.push and main_process:
        # Before any training: a missing or read-only token should cost seconds, not a GPU-day.
        logger.info("will push to %s as %s", cfg.hub.model_id, check_write_access())

    set_seed(training_args.seed)
    processor = load_image_processor(cfg.model)
    with training_args.main_process_first(desc="data audit"):
        # The main process draws (synthetic), inspects and keeps; the others then read what it kept.
        prepared = prepare_data(cfg.data, training_args.seed, processor_image_size(processor))
    data, report = prepared.data, prepared.report
    if "validation" not in data.splits and training_args.eval_strategy != "no":
        raise ConfigError("there is no validation split: set data.validation_split > 0 or training.eval_strategy=no")
    if report is not None:
        if main_process:
            write_audit(report, cfg.output_dir)
        for warning in report["warnings"]:
            logger.warning("data audit: %s", warning)
        reason = refusal(report)
        if reason:
            raise ConfigError(f"{reason}\n(full report: {cfg.output_dir / 'data_audit.json'})")
    info = run_info(argv, data, training_args, cfg)
    for split, summary in info["data"]["splits"].items():
        logger.info("%s: %d images %s", split, summary["num_images"], summary["class_counts"])
    model = build_model(cfg.model, data.id2label, data.label2id, gpu=uses_gpu(cfg.training))
    info["switches"] = switches_record({**cfg.training, "attn_implementation": cfg.model.attn_implementation},
                                       training_args, model)
    pipeline = prepare_inputs(data, processor, cfg, training_args)
    info["preprocessing"] = [cache.__dict__ for cache in pipeline.cache_reports]
    trainer = build_trainer(model, training_args, data, processor, cfg, pipeline)

    if main_process:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        experiment, resolved = cfg.output_dir / "experiment.yaml", to_yaml(cfg)
        if checkpoint and experiment.is_file() and experiment.read_text(encoding="utf-8") != resolved:
            logger.warning("resuming with a configuration that differs from the interrupted run's experiment.yaml")
        experiment.write_text(resolved, encoding="utf-8")
        (cfg.output_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    if checkpoint:
        logger.info("resuming from %s", checkpoint)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    train_result.metrics.update(prepared.removed)
    train_result.metrics.update(early_stopping_record(trainer))
    results = {"train": train_result.metrics}
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    evaluated = {}
    for split, prefix in PREFIXES.items():
        if split not in data.splits:
            continue
        output = trainer.predict(pipeline.splits[split], metric_key_prefix=prefix)
        metrics = output.metrics
        if prefix == "eval":
            # Records the final evaluation in the log history and adds the epoch, as evaluate() does.
            trainer.log(metrics)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        evaluated[split] = {"probs": softmax(output.predictions), "label_ids": output.label_ids}
        if main_process:
            matrix = confusion(output.label_ids, output.predictions, data.labels)
            path = cfg.output_dir / f"{prefix}_confusion_matrix.json"
            path.write_text(json.dumps(matrix, indent=2) + "\n", encoding="utf-8")
            ds = data.splits[split]
            analyse_split(prefix, evaluated[split]["probs"], output.label_ids, ds, data.image_column,
                          sample_names(ds, data.image_column), data.labels, prepared.attributes.get(split),
                          cfg.output_dir)
        results[prefix] = metrics
    trainer.save_state()
    pos_label = resolve_positive_label(data.labels, cfg.data.positive_label)
    if main_process and "validation" in evaluated:
        table = operating_points(evaluated["validation"], evaluated.get("test"), pos_label, data.labels)
        if table is not None:
            (cfg.output_dir / "operating_points.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    if report is not None and evaluated and cfg.data.shortcut_test:
        # The split that reports the headline number: test where there is one.
        split = "test" if "test" in evaluated else "validation"
        flagged = flagged_attributes(report)

        def predict(ds, name):
            view = eval_view(ds, name, data.image_column, data.label_column, processor, cfg.data.preprocess,
                             cfg.data.preprocess_dir, cfg.data.preprocess_num_proc, training_args)
            return softmax(trainer.predict(view, metric_key_prefix="shortcut").predictions)

        tests = shortcut_tests(flagged, PREFIXES[split], data.splits[split], data.image_column,
                               prepared.inspections[split], data.labels, evaluated[split]["label_ids"],
                               evaluated[split]["probs"], predict, processor_image_size(processor))
        if main_process:
            path = cfg.output_dir / f"{PREFIXES[split]}_shortcut_test.json"
            path.write_text(json.dumps({"flagged": flagged, "tests": tests}, indent=2) + "\n", encoding="utf-8")

    if main_process:
        logger.info("model card: %s", write_card(cfg.output_dir))
        if cfg.hub.push:
            url = push_run(cfg.output_dir, cfg.hub.model_id, cfg.hub.private, cfg.hub.revision)
            logger.info("pushed to %s", url)
    return results


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, PushError) as err:
        sys.exit(f"error: {err}")
