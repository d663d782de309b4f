"""The one evaluation of a split, used by train.py (eval and test) and evaluate.py alike.

`evaluate_split` predicts the split with the run's Trainer and writes every per-split file the
run folder names (run_folder.SPLIT_OUTPUTS): results, predictions, confusion matrix (JSON and
figure), classification report, ROC curve, slices, calibration, intervals and the error gallery.
`write_operating_points` and `shortcut_test` then read what it returns.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import datasets
import numpy as np

from facemask import run_folder
from facemask.data.inspection import split_digest
from facemask.evaluation.analysis import analyse_split, operating_points
from facemask.evaluation.counterfactuals import shortcut_tests
from facemask.evaluation.eval_data import SplitData, sample_names
from facemask.evaluation.explain import trainer_explainer
from facemask.evaluation.figures import confusion_figure, roc_curve_png
from facemask.evaluation.intervals import split_intervals
from facemask.evaluation.metrics import classification_report, confusion
from facemask.evaluation.predict import prediction_rows
from facemask.runtime.files import write_rows
from facemask.runtime.model import softmax

logger = logging.getLogger("facemask")


@dataclass
class EvaluatedSplit:
    prefix: str
    metrics: Dict[str, Any]
    probs: np.ndarray
    label_ids: np.ndarray


def evaluate_split(trainer: Any, view: Any, split: SplitData, prefix: str, pos_label: int, out_dir: Path,
                   extra_metrics: Optional[Dict[str, Any]] = None, log_history: bool = False,
                   source: Optional[str] = None, maps: str = "ablation") -> EvaluatedSplit:
    """Predict `view` (the split as the Trainer reads it) and write the split's files into out_dir.

    Every process predicts its share (the Trainer gathers them); only the main one writes.
    `log_history` records the metrics in the Trainer's log history first, as `evaluate()` does.
    `source` names where the split's images came from in its intervals file (a folder's or
    dataset's name, never a path: the file is published). `maps`: the error gallery's explanation
    method (explain.METHODS) or "none".
    """
    output = trainer.predict(view, metric_key_prefix=prefix)
    names = sample_names(split.dataset, split.image_column)
    if len(output.label_ids) != len(names):
        raise RuntimeError(f"evaluated {len(output.label_ids)} samples for {len(names)} images")
    metrics = {**output.metrics, **(extra_metrics or {})}
    if log_history:
        trainer.log(metrics)  # also adds the epoch to the metrics
    trainer.log_metrics(prefix, metrics)
    trainer.save_metrics(prefix, metrics)
    probs, labels = softmax(output.predictions), split.labels
    if trainer.is_world_process_zero():
        out_dir = Path(out_dir)
        digests = [found.sha256 for found in split.inspections] if split.inspections else None
        rows = prediction_rows(names, output.label_ids, probs, labels, digests)
        write_rows(rows, run_folder.PREDICTIONS.path(out_dir, prefix))
        matrix = confusion(output.label_ids, output.predictions, labels)
        run_folder.write_json(run_folder.CONFUSION.path(out_dir, prefix), matrix)
        confusion_figure(prefix, matrix, out_dir)
        run_folder.write_json(run_folder.REPORT.path(out_dir, prefix),
                              classification_report(output.label_ids, probs, labels))
        roc_curve_png(output.label_ids, probs, labels, pos_label, f"{run_folder.split_name(prefix)} split",
                      run_folder.ROC_FIGURE.path(out_dir, prefix))
        analyse_split(prefix, probs, output.label_ids, split.dataset, split.image_column, names, labels,
                      split.attributes, out_dir, trainer_explainer(trainer, maps) if maps != "none" else None)
        intervals = split_intervals(probs, output.label_ids, pos_label)
        # The images' identity beside their source: compare pairs two runs' predictions by it.
        images = split_digest(split.inspections, output.label_ids, labels)
        run_folder.write_json(run_folder.INTERVALS.path(out_dir, prefix), {"split": prefix, "source": source,
                                                                           "content_sha256": images, **intervals})
    return EvaluatedSplit(prefix, metrics, probs, output.label_ids)


def write_operating_points(validation: EvaluatedSplit, test: Optional[EvaluatedSplit], pos_label: int,
                           labels: List[str], out_dir: Path) -> Optional[Dict[str, Any]]:
    """Thresholds chosen on validation, with their validation and test metrics (binary tasks)."""
    as_dict = lambda e: {"probs": e.probs, "label_ids": e.label_ids}  # noqa: E731
    table = operating_points(as_dict(validation), as_dict(test) if test else None, pos_label, labels)
    if table is not None:
        run_folder.write_json(run_folder.OPERATING_POINTS.path(out_dir), table)
    return table


def shortcut_test(trainer: Any, view: Callable[[datasets.Dataset, str], Any], flagged: List[str], split: SplitData,
                  evaluated: EvaluatedSplit, image_side: int, out_dir: Path) -> List[Dict[str, Any]]:
    """The split predicted again with each flagged attribute family neutralised (see
    evaluation/counterfactuals.py); `view` turns a changed copy into what the Trainer reads."""

    def predict(ds: datasets.Dataset, name: str) -> np.ndarray:
        return softmax(trainer.predict(view(ds, name), metric_key_prefix="shortcut").predictions)

    tests = shortcut_tests(flagged, evaluated.prefix, split.dataset, split.image_column, split.inspections,
                           split.labels, evaluated.label_ids, evaluated.probs, predict, image_side)
    if trainer.is_world_process_zero():
        run_folder.write_json(run_folder.SHORTCUT_TEST.path(out_dir, evaluated.prefix),
                              {"flagged": flagged, "tests": tests})
    return tests


def robustness_split(model: Any, split: SplitData, evaluated: EvaluatedSplit, processor: Any, out_dir: Path,
                     max_images: Optional[int], seed: int = 0, maps: str = "ablation",
                     batch_size: int = 32) -> Dict[str, Any]:
    """The split under corruptions and occluders (evaluation/robustness.py): its record, figure and
    gallery of flipped images with their maps. Callers run it on the main process alone: 37 small
    predictions of at most max_images, not worth sharding."""
    from facemask.detection.detectors import load_detector
    from facemask.evaluation.explain import model_explainer
    from facemask.evaluation.figures import occlusion_png, robustness_png
    from facemask.evaluation.predict import class_probabilities
    from facemask.evaluation.robustness import robustness_test

    def predict(images: List[Any]) -> np.ndarray:
        return class_probabilities(model, processor, images, batch_size, seen=True)

    record = robustness_test(split.dataset, split.image_column, split.labels, evaluated.label_ids, processor, predict,
                             load_detector(), max_images, seed)
    occlusion = record["occlusion"]
    gallery = occlusion.pop("gallery", [])
    figure = run_folder.OCCLUSION_FIGURE.path(out_dir, evaluated.prefix)
    if gallery:
        explainer = model_explainer(model, processor, maps) if maps != "none" else None
        mask = split.labels.index(occlusion["mask_class"])
        found = None
        if explainer is not None:
            try:
                found = explainer([g["image"] for g in gallery], [mask] * len(gallery))
            except (RuntimeError, ValueError) as err:  # a map is extra: the gallery is drawn without it
                logger.warning("occlusion gallery drawn without maps: %s", str(err).splitlines()[0])
        occlusion_png([g.pop("image") for g in gallery], gallery, figure, occlusion["mask_class"], found)
    elif figure.exists():
        figure.unlink()  # an earlier evaluation's flips would otherwise stand for this one
    occlusion["flipped"] = gallery
    run_folder.write_json(run_folder.ROBUSTNESS.path(out_dir, evaluated.prefix), record)
    robustness_png(record, f"{run_folder.split_name(evaluated.prefix)} split",
                   run_folder.ROBUSTNESS_FIGURE.path(out_dir, evaluated.prefix))
    flips = (f"{occlusion['flip_rate']:.1%} of {occlusion['tested']} no-mask faces read as masked once a hand, scarf "
             f"or phone covered the mouth ({occlusion['skipped']} images without a face found skipped)"
             if occlusion.get("flip_rate") is not None else f"occlusion not measured: {occlusion.get('reason')}")
    seconds = record["seconds"]
    logger.info("robustness (%s): %d of %d images, %d corruptions x 5 severities and %d occluders in %.0f s "
                "(%.0fx predicting the clean images; decoding %.0f s, corruptions %.0f s, occlusion %.0f s); "
                "accuracy %.4f clean, %.4f under corruption on average, worst under %s (%.4f); %s",
                evaluated.prefix, record["images"], record["of_images"], len(record["corruptions"]),
                len(occlusion.get("occluders", [])), seconds["total"], record["cost_vs_clean"], seconds["decode"],
                seconds["corruptions"], seconds["occlusion"], record["clean_accuracy"],
                record["mean_corruption_accuracy"], record["worst_corruption"], record["worst_corruption_accuracy"],
                flips)
    return record
