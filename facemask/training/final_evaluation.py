"""The end of a training run: its validation and test splits and the extra test sets evaluated
(evaluation/split.py, the same evaluation evaluate.py runs), the operating points chosen on
validation, and on the split that reports the headline number the shortcut reliance test of the
attributes the audit flagged and the robustness test (corruptions, occluders; data.robustness)."""

from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List

import torch
from transformers import IntervalStrategy

from facemask.data.audit import flagged_attributes
from facemask.data.inspection import split_digest
from facemask.data.prepare import Prepared
from facemask.data.labels import resolve_positive_label
from facemask.evaluation.split import (EvaluatedSplit, SplitData, evaluate_split, robustness_split, shortcut_test,
                                       write_operating_points)
from facemask.pipeline.inputs import eval_view
from facemask.recipe.distill import AsUsed, teacher_held_out
from facemask.run_folder import EXPERIMENT, TEACHER, prefix_of, split_name, write_json
from facemask.training.setup import RunSetup
from facemask.training.trainer import evaluation_trainer

logger = logging.getLogger("facemask")


def split_data(prepared: Prepared, split: str) -> SplitData:
    data = prepared.data
    return SplitData(data.splits[split], data.labels, data.image_column, prepared.attributes.get(split),
                     prepared.inspections.get(split))


def evaluate_trained(run: RunSetup) -> Dict[str, EvaluatedSplit]:
    """{split: its evaluation} for validation, test and data.extra_test's sets, where the run has them."""
    cfg, trainer, prepared = run.cfg, run.trainer, run.prepared
    data, out = prepared.data, cfg.output_dir
    pos_label = resolve_positive_label(data.labels, cfg.data.positive_label)
    # An extra test set's prefix is its name: NAME_results.json, NAME_accuracy, ...
    prefixes = {split: prefix_of(split) for split in data.splits if split != "train"}
    evaluated = {split: evaluate_split(trainer, run.pipeline.splits[split], split_data(prepared, split), prefix,
                                       pos_label, out, log_history=prefix == "eval",
                                       source=data.extra_sources.get(split), maps=cfg.data.error_maps)
                 for split, prefix in prefixes.items()}
    trainer.save_state()
    if run.main_process and "validation" in evaluated:
        write_operating_points(evaluated["validation"], evaluated.get("test"), pos_label, data.labels, out)
    headline = "test" if "test" in evaluated else "validation"
    if prepared.report is not None and headline in evaluated and cfg.data.shortcut_test:

        def view(ds: Any, name: str) -> Any:
            return eval_view(ds, name, data.image_column, data.label_column, run.processor, cfg.data.preprocess,
                             cfg.data.preprocess_dir, cfg.data.preprocess_num_proc, run.args)

        shortcut_test(trainer, view, flagged_attributes(prepared.report), split_data(prepared, headline),
                      evaluated[headline], run.image_side, out)
    if trainer.recipe is not None and trainer.recipe.teacher is not None:
        evaluate_teacher(run, pos_label, [split for split in ("validation", "test") if split in evaluated])
    # Last: the main process alone, after every step the other processes share.
    if headline in evaluated and cfg.data.robustness and run.main_process:
        if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
            logger.warning("robustness test skipped: the model's weights are sharded across processes; run it on "
                           "the saved model: python evaluate.py %s --config %s --split %s --output-dir %s-robustness "
                           "--robustness", out, EXPERIMENT.path(out), headline, out)
        else:
            robustness_split(trainer.accelerator.unwrap_model(trainer.model), split_data(prepared, headline),
                             evaluated[headline], run.processor, out, cfg.data.robustness_max_images, cfg.seed,
                             cfg.data.error_maps, batch_size=run.args.per_device_eval_batch_size)
    return evaluated


def evaluate_teacher(run: RunSetup, pos_label: int, splits: List[str]) -> Dict[str, Any]:
    """teacher.json: who taught the model, how, and the teacher's metrics on the run's own splits
    (its own preprocessing, the same metrics), for the card to set beside the student's."""
    cfg, teacher, data = run.cfg, run.trainer.recipe.teacher, run.prepared.data
    d = cfg.data
    # The run's arguments (devices, batch size, processes), for predicting only.
    args = copy.copy(run.args)
    args.eval_strategy, args.load_best_model_at_end, args.report_to = IntervalStrategy.NO, False, []
    judge = evaluation_trainer(teacher.model, teacher.processor, args, d.preprocess, pos_label)
    results = _scores(judge, {split: eval_view(data.splits[split], f"{split}-teacher", data.image_column,
                                               data.label_column, teacher.processor, d.preprocess, d.preprocess_dir,
                                               d.preprocess_num_proc, run.args) for split in splits})
    as_used = teacher_as_used(run, args, pos_label, splits)
    k = cfg.recipe.distill
    cache = None
    if teacher.cache is not None:
        counts = torch.tensor([teacher.hits, teacher.misses], dtype=torch.int64)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            counts = counts.to(run.args.device)
            torch.distributed.all_reduce(counts)  # every process's batches
        cache = {"hits": int(counts[0]), "misses": int(counts[1])}
    digests = {prefix_of(split): split_digest(run.prepared.inspections.get(split),
                                              data.splits[split][data.label_column], data.labels)
               for split in splits}
    held_out = teacher_held_out(k.teacher, digests)
    record = {"teacher": teacher.name, "teacher_revision": k.teacher_revision, "alpha": k.alpha,
              "temperature": k.temperature, "cached_logits": teacher.cache is not None,
              "logit_cache": cache,
              "teacher_parameters": sum(p.numel() for p in teacher.model.parameters()),
              # At its own resolution (its own processor), and as it was used in training.
              "teacher_side": teacher.side, "student_side": run.image_side, "results": results,
              "results_as_used": as_used, "held_out": held_out}
    if run.main_process:
        write_json(TEACHER.path(cfg.output_dir), record)
        for prefix, metrics in results.items():
            logger.info("teacher %s on %s: accuracy %.4f at its own %d px, %.4f as used in training (the student's "
                        "%d px input resized)", teacher.name, split_name(prefix), metrics[f"{prefix}_accuracy"],
                        teacher.side, as_used[prefix][f"{prefix}_accuracy"], run.image_side)
            if not held_out[prefix]:
                logger.warning("the teacher %s on %s: %s; its score there is not a held-out figure (teacher.json "
                               "and the card say so)", teacher.name, split_name(prefix),
                               "it trained on these images" if held_out[prefix] is False
                               else "its run does not show that it never trained on these images")
    return record


def teacher_as_used(run: RunSetup, args: Any, pos_label: int, splits: List[str]) -> Dict[str, Dict[str, Any]]:
    """The teacher's metrics on the inputs its targets came from: the student's evaluation inputs of
    each split (the student's processor and side), converted to the teacher's input as training
    converts each batch (recipe/distill.py AsUsed)."""
    judge = evaluation_trainer(AsUsed(run.trainer.recipe.teacher), run.processor, args, run.cfg.data.preprocess,
                               pos_label)
    return _scores(judge, {split: run.pipeline.splits[split] for split in splits})


def _scores(judge: Any, views: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """{prefix: the metrics `judge` gives each split's view}, without the timings (machine noise)."""
    results = {}
    for split, view in views.items():
        prefix = prefix_of(split)
        metrics = judge.predict(view, metric_key_prefix=prefix).metrics
        results[prefix] = {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "_per_second"))}
    return results
