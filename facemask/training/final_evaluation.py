"""The end of a training run: its validation and test splits and the extra test sets evaluated
(evaluation/split.py, the same evaluation evaluate.py runs), the operating points chosen on
validation, and the shortcut reliance test of the attributes the audit flagged, on the split that
reports the headline number."""

from __future__ import annotations

from typing import Any, Dict

from facemask.data.audit import flagged_attributes
from facemask.data.prepare import Prepared
from facemask.data.sources import resolve_positive_label
from facemask.evaluation.split import EvaluatedSplit, SplitData, evaluate_split, shortcut_test, write_operating_points
from facemask.pipeline.inputs import eval_view
from facemask.run_folder import prefix_of
from facemask.training.setup import RunSetup


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
                                       source=data.extra_sources.get(split))
                 for split, prefix in prefixes.items()}
    trainer.save_state()
    if run.main_process and "validation" in evaluated:
        write_operating_points(evaluated["validation"], evaluated.get("test"), pos_label, data.labels, out)
    if prepared.report is not None and evaluated and cfg.data.shortcut_test:
        split = "test" if "test" in evaluated else "validation"

        def view(ds: Any, name: str) -> Any:
            return eval_view(ds, name, data.image_column, data.label_column, run.processor, cfg.data.preprocess,
                             cfg.data.preprocess_dir, cfg.data.preprocess_num_proc, run.args)

        shortcut_test(trainer, view, flagged_attributes(prepared.report), split_data(prepared, split),
                      evaluated[split], run.image_side, out)
    return evaluated
