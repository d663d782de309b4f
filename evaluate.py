"""Evaluate a saved or Hub model on an image folder, a Hub dataset or the synthetic set.

    python evaluate.py MODEL --data DATA [--split test] [--output-dir DIR] [--batch-size 64]
    python evaluate.py MODEL --config configs/quickstart.yaml --split test
    accelerate launch evaluate.py MODEL --data DATA      (each sample is counted once)

Writes DIR/<split>_results.json, <split>_predictions.csv, <split>_confusion_matrix.json/.png,
<split>_roc_curve.png and <split>_classification_report.json; DIR defaults to MODEL when it is
a run folder. --update-card adds the split to the run's model card.

This file shares its name with the `evaluate` library. Python puts a script's folder first on
sys.path, so the package imports the library through `facemask.metrics.import_evaluate_library`,
which skips this file; nothing here imports `evaluate`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional

from facemask.config.loading import load_config
from facemask.config.schema import ConfigError, DataConfig
from facemask.data.inspection import inspect_splits
from facemask.data.prepare import prepare_data
from facemask.data.shortcuts import FAMILIES, attribute_shortcuts, attribute_values, partial_shortcuts, sharpness_edges
from facemask.data.sources import resolve_positive_label
from facemask.evaluation.analysis import analyse_split
from facemask.evaluation.counterfactuals import shortcut_tests
from facemask.evaluation.eval_data import from_prepared, load_eval_data, match_labels, remap_labels, sample_names
from facemask.evaluation.figures import confusion_matrix_png, roc_curve_png
from facemask.evaluation.loading import load_model
from facemask.evaluation.metrics import classification_report, confusion, make_compute_metrics, softmax
from facemask.evaluation.predict import prediction_rows, write_rows
from facemask.pipeline.augment import BatchTransform
from facemask.pipeline.cache import collate_cached
from facemask.pipeline.inputs import eval_view
from facemask.pipeline.per_image import collate
from facemask.pipeline.processor import processor_image_size
from facemask.publish.card import write_card
from facemask.training.arguments import logger, setup_logging
from facemask.training.performance import dataloader_settings
from facemask.training.trainer import FaceMaskTrainer


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a training run's output folder or a Hub model id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="image folder (one sub-folder per class), Hub dataset id, or 'synthetic'")
    source.add_argument("--config", help="a training config whose data section (and splits) to use")
    parser.add_argument("--split", default="test", help="split to evaluate and name results by (default: test)")
    parser.add_argument("--output-dir", help="default: MODEL when it is a local folder, else outputs/eval/<id>")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--positive-label", help="class scored by precision/recall/F1 (default: the mask class)")
    parser.add_argument("--update-card", action="store_true", help="add this split to the run folder's card")
    parser.add_argument("--revision", help="Hub revision of MODEL")
    parser.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                        help="PyTorch, or MODEL's exported onnx/model.onnx (model_quantized.onnx) run by onnxruntime")
    parser.add_argument("--num-images", type=int, default=1000, help="with --data synthetic")
    parser.add_argument("--image-size", type=int, default=128, help="with --data synthetic")
    parser.add_argument("--seed", type=int, default=1, help="with --data synthetic: other than training's 42")
    parser.add_argument("--preprocess", choices=["cache", "per_image"], default="cache",
                        help="decode each image once into the preprocessing cache (reused by later runs), "
                             "or open and resize each image as it is read")
    parser.add_argument("--cache-dir", help="preprocessing cache folder (default: <datasets cache>/facemask-preprocessed)")
    parser.add_argument("--shortcut-test", nargs="*", metavar="ATTRIBUTE",
                        help="also evaluate with each shortcut attribute neutralised: the named ones "
                             f"({', '.join(FAMILIES)}), or those an audit of DATA flags when none is named")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_]+", args.split):
        parser.error(f"--split must be letters, digits or _ (it names files and metric keys), got {args.split!r}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    unknown = [a for a in args.shortcut_test or [] if a not in FAMILIES]
    if unknown:
        parser.error(f"--shortcut-test: unknown attribute(s) {unknown}; choose from: {', '.join(FAMILIES)}")
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    import torch
    from transformers import TrainingArguments

    model_dir = Path(args.model).expanduser()
    local = model_dir.is_dir()
    if args.update_card and not local:
        raise ConfigError("--update-card needs MODEL to be a local run folder (its card lives there)")
    out_dir = Path(args.output_dir) if args.output_dir else (
        model_dir if local else Path("outputs") / "eval" / args.model.replace("/", "__"))
    use_cpu = not torch.cuda.is_available()
    training_args = TrainingArguments(output_dir=str(out_dir), per_device_eval_batch_size=args.batch_size,
                                      use_cpu=use_cpu, report_to="none", remove_unused_columns=False,
                                      label_names=["labels"], disable_tqdm=True,
                                      **dataloader_settings({"use_cpu": use_cpu}, args.preprocess))
    setup_logging(training_args)
    model, processor = load_model(args.model, args.revision, args.backend)
    image_side = processor_image_size(processor)
    if args.config:
        cfg = load_config(args.config)
        prepared = prepare_data(cfg.data, cfg.seed, image_side)  # the splits training carved, copies removed
        data = from_prepared(prepared.data, args.split)
        inspections = prepared.inspections.get(args.split)
        attributes = prepared.attributes.get(args.split)
        min_side = cfg.data.min_image_side
    else:
        data = load_eval_data(args.data, args.split, args.num_images, args.image_size, args.seed)
        inspections, attributes, min_side = None, None, DataConfig().min_image_side
    if inspections is None:
        inspections = inspect_splits({args.split: data.dataset}, data.image_column, min_side, image_side,
                                     args.cache_dir)[args.split]
        edges = sharpness_edges([f.sharpness for f in inspections])
        attributes = [attribute_values(f, edges) for f in inspections]
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    data = remap_labels(data, match_labels(data.labels, id2label), id2label)
    names = sample_names(data.dataset, data.image_column)
    pos_label = resolve_positive_label(data.labels, args.positive_label)

    def view(ds, name):
        return eval_view(ds, name, data.image_column, data.label_column, processor, args.preprocess, args.cache_dir,
                         args=training_args)

    if args.preprocess == "cache":
        collator, transform = collate_cached, BatchTransform(processor, DataConfig(), image_side)
    else:
        collator, transform = collate, None
    trainer = FaceMaskTrainer(model=model, args=training_args, data_collator=collator, processing_class=processor,
                              compute_metrics=make_compute_metrics(pos_label), batch_transform=transform)
    output = trainer.predict(view(data.dataset, args.split), metric_key_prefix=args.split)
    if len(output.label_ids) != len(names):
        raise RuntimeError(f"evaluated {len(output.label_ids)} samples for {len(names)} images")
    metrics = output.metrics
    metrics[f"{args.split}_backend"] = args.backend  # which graph produced these figures, in the results and card
    trainer.log_metrics(args.split, metrics)
    trainer.save_metrics(args.split, metrics)
    probs = softmax(output.predictions)
    if args.shortcut_test is not None:  # every process predicts its share of the counterfactuals
        run_shortcut_test(args, trainer, view, data, inspections, attributes, probs, output.label_ids, image_side,
                          out_dir)
    if not trainer.is_world_process_zero():
        return metrics

    prefix = out_dir / args.split
    write_rows(prediction_rows(names, output.label_ids, probs, data.labels), Path(f"{prefix}_predictions.csv"))
    matrix = confusion(output.label_ids, output.predictions, data.labels)
    Path(f"{prefix}_confusion_matrix.json").write_text(json.dumps(matrix, indent=2) + "\n", encoding="utf-8")
    report = classification_report(output.label_ids, probs, data.labels)
    Path(f"{prefix}_classification_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    confusion_matrix_png(matrix, f"{args.split} split", Path(f"{prefix}_confusion_matrix.png"))
    roc_curve_png(output.label_ids, probs, data.labels, pos_label, f"{args.split} split",
                  Path(f"{prefix}_roc_curve.png"))
    analyse_split(args.split, probs, output.label_ids, data.dataset, data.image_column, names, data.labels,
                  attributes, out_dir)
    logger.info("%s: %d images from %s at %.1f images/s with %d process(es); results in %s", args.split, len(names),
                data.source, metrics[f"{args.split}_samples_per_second"], training_args.world_size, out_dir)
    if args.update_card:
        if out_dir.resolve() != model_dir.resolve():
            for suffix in ("_results.json", "_confusion_matrix.json", "_slices.json", "_calibration.json",
                           "_errors.json", "_errors.png", "_shortcut_test.json"):
                if Path(f"{prefix}{suffix}").is_file():
                    shutil.copy(f"{prefix}{suffix}", model_dir / f"{args.split}{suffix}")
        logger.info("model card: %s", write_card(model_dir))
    return metrics


def run_shortcut_test(args, trainer, view, data, inspections, attributes, probs, label_ids, image_side, out_dir):
    """--shortcut-test: the named attributes, or those an audit of the evaluated data flags."""
    flagged = list(args.shortcut_test)
    if not flagged:
        ok = [k for k, f in enumerate(inspections) if f.status == "ok"]
        names = [data.labels[label_ids[k]] for k in ok]
        rules = DataConfig()  # the audit's default rules
        flagged = [s["attribute"] for s in attribute_shortcuts([inspections[k] for k in ok], names,
                                                               rules.shortcut_threshold, seed=0)]
        flagged += [s["attribute"] for s in partial_shortcuts([attributes[k] for k in ok], names,
                                                              rules.shortcut_min_images, rules.shortcut_purity)]
        flagged = list(dict.fromkeys(flagged))
        logger.info("shortcut test: the audit of %s flags %s", data.source, flagged or "nothing")

    def predict(ds, name):
        return softmax(trainer.predict(view(ds, name), metric_key_prefix="shortcut").predictions)

    tests = shortcut_tests(flagged, args.split, data.dataset, data.image_column, inspections, data.labels,
                           label_ids, probs, predict, image_side)
    if trainer.is_world_process_zero():
        path = out_dir / f"{args.split}_shortcut_test.json"
        path.write_text(json.dumps({"flagged": flagged, "tests": tests}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"error: {err}")
