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

from facemask.augment import BatchTransform
from facemask.cache import CacheSpec, build_or_load, cache_root, collate_cached
from facemask.card import write_card
from facemask.config import ConfigError, DataConfig, load_config
from facemask.data import collate, load_data, make_transforms, resolve_positive_label
from facemask.evaluation import (
    classification_report,
    from_prepared,
    load_eval_data,
    load_model,
    match_labels,
    prediction_rows,
    remap_labels,
    sample_names,
    write_rows,
)
from facemask.metrics import confusion, make_compute_metrics, softmax
from facemask.performance import dataloader_settings
from facemask.plots import confusion_matrix_png, roc_curve_png
from facemask.training import FaceMaskTrainer, logger, setup_logging


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
    parser.add_argument("--num-images", type=int, default=1000, help="with --data synthetic")
    parser.add_argument("--image-size", type=int, default=128, help="with --data synthetic")
    parser.add_argument("--seed", type=int, default=1, help="with --data synthetic: other than training's 42")
    parser.add_argument("--preprocess", choices=["cache", "per_image"], default="cache",
                        help="decode each image once into the preprocessing cache (reused by later runs), "
                             "or open and resize each image as it is read")
    parser.add_argument("--cache-dir", help="preprocessing cache folder (default: <datasets cache>/facemask-preprocessed)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_]+", args.split):
        parser.error(f"--split must be letters, digits or _ (it names files and metric keys), got {args.split!r}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
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
    model, processor = load_model(args.model, args.revision)
    if args.config:
        cfg = load_config(args.config)
        data = from_prepared(load_data(cfg.data, cfg.seed), args.split)
    else:
        data = load_eval_data(args.data, args.split, args.num_images, args.image_size, args.seed)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    data = remap_labels(data, match_labels(data.labels, id2label), id2label)
    names = sample_names(data.dataset, data.image_column)
    pos_label = resolve_positive_label(data.labels, args.positive_label)
    if args.preprocess == "cache":
        spec = CacheSpec.for_split(processor, train=False)
        root = cache_root(args.cache_dir)
        with training_args.main_process_first(desc="preprocessing cache"):
            dataset, report = build_or_load(data.dataset, args.split, data.image_column, data.label_column, spec,
                                            processor, root)
        logger.info(report.describe())
        collator, transform = collate_cached, BatchTransform(processor, DataConfig(), spec.side)
    else:
        dataset, collator, transform = data.dataset, collate, None
        dataset.set_transform(make_transforms(processor, DataConfig(), data.image_column, data.label_column)[1])

    trainer = FaceMaskTrainer(model=model, args=training_args, data_collator=collator, processing_class=processor,
                              compute_metrics=make_compute_metrics(pos_label), batch_transform=transform)
    output = trainer.predict(dataset, metric_key_prefix=args.split)
    if len(output.label_ids) != len(names):
        raise RuntimeError(f"evaluated {len(output.label_ids)} samples for {len(names)} images")
    metrics = output.metrics
    trainer.log_metrics(args.split, metrics)
    trainer.save_metrics(args.split, metrics)
    if not trainer.is_world_process_zero():
        return metrics

    probs = softmax(output.predictions)
    prefix = out_dir / args.split
    write_rows(prediction_rows(names, output.label_ids, probs, data.labels), Path(f"{prefix}_predictions.csv"))
    matrix = confusion(output.label_ids, output.predictions, data.labels)
    Path(f"{prefix}_confusion_matrix.json").write_text(json.dumps(matrix, indent=2) + "\n", encoding="utf-8")
    report = classification_report(output.label_ids, probs, data.labels)
    Path(f"{prefix}_classification_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    confusion_matrix_png(matrix, f"{args.split} split", Path(f"{prefix}_confusion_matrix.png"))
    roc_curve_png(output.label_ids, probs, data.labels, pos_label, f"{args.split} split",
                  Path(f"{prefix}_roc_curve.png"))
    logger.info("%s: %d images from %s at %.1f images/s with %d process(es); results in %s", args.split, len(names),
                data.source, metrics[f"{args.split}_samples_per_second"], training_args.world_size, out_dir)
    if args.update_card:
        if out_dir.resolve() != model_dir.resolve():
            for suffix in ("_results.json", "_confusion_matrix.json"):
                shutil.copy(f"{prefix}{suffix}", model_dir / f"{args.split}{suffix}")
        logger.info("model card: %s", write_card(model_dir))
    return metrics


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"error: {err}")
