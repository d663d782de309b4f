"""Evaluate a saved or Hub model on an image folder, a Hub dataset or the synthetic set.

    python evaluate.py MODEL --data DATA [--split test] [--output-dir DIR] [--batch-size 64]
    python evaluate.py MODEL --config configs/quickstart.yaml --split test --output-dir DIR
    accelerate launch evaluate.py MODEL --data DATA      (each sample is counted once)

Writes the split's files into DIR (the per-split rows of docs/outputs.md: results, predictions,
confusion matrix, ROC curve, report, slices, calibration, errors); DIR defaults to MODEL when it is
a run folder. --update-card adds the split to the run's model card. A split DIR (or, with
--update-card, the run folder) already holds is refused unless --overwrite: name it another --split.

evaluate.py shares its name with the `evaluate` library, which nothing in this project imports.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from facemask.config.schema import ConfigError, DataConfig
from facemask.data.audit import flagged_attributes, shortcut_findings
from facemask.data.shortcuts import FAMILIES
from facemask.data.labels import resolve_positive_label
from facemask.evaluation.eval_data import SplitData, evaluation_split
from facemask.evaluation.loading import load_model
from facemask.evaluation.robustness import DEFAULT_MAX_IMAGES
from facemask.evaluation.split import EvaluatedSplit, evaluate_split, robustness_split, shortcut_test
from facemask.pipeline.inputs import eval_view
from facemask.pipeline.processor import processor_image_size
from facemask.publish.card import add_split_to_card
from facemask.run_folder import RUN_MARKERS, split_files
from facemask.training.arguments import evaluation_arguments, logger, setup_logging
from facemask.training.trainer import evaluation_trainer


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
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the split's files when the output folder (or, with --update-card, the run "
                             "folder) already holds a split of this name")
    parser.add_argument("--revision", help="Hub revision of MODEL")
    parser.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                        help="PyTorch, or MODEL's exported onnx/model.onnx (model_quantized.onnx) run by onnxruntime")
    parser.add_argument("--num-images", type=int, default=1000, help="with --data synthetic")
    parser.add_argument("--image-size", type=int, default=128, help="with --data synthetic")
    parser.add_argument("--seed", type=int, default=1,
                        help="with --data synthetic: other than training's 42; with --robustness: its sample's and "
                             "corruptions' seed")
    parser.add_argument("--preprocess", choices=["cache", "per_image"], default="cache",
                        help="decode each image once into the preprocessing cache (reused by later runs), "
                             "or open and resize each image as it is read")
    parser.add_argument("--cache-dir", help="preprocessing cache folder (default: <datasets cache>/facemask-preprocessed)")
    parser.add_argument("--error-maps", choices=["ablation", "gradcam", "none"], default="ablation",
                        help="the error gallery's explanation maps (docs/evaluation.md): one forward pass per patch "
                             "(ablation), one backward pass (gradcam), or none")
    parser.add_argument("--robustness", action="store_true",
                        help="also evaluate the split under 7 corruptions at 5 severities and the occlusion test "
                             "(a hand, scarf or phone over no-mask faces): about 37 more predictions of the split")
    parser.add_argument("--robustness-max-images", type=int, default=DEFAULT_MAX_IMAGES, metavar="N",
                        help=f"with --robustness: a sample of at most N images, drawn with --seed (default "
                             f"{DEFAULT_MAX_IMAGES}; the whole split when N is at least its size)")
    parser.add_argument("--shortcut-test", nargs="*", metavar="ATTRIBUTE",
                        help="also evaluate with each shortcut attribute neutralised: the named ones "
                             f"({', '.join(FAMILIES)}), or those an audit of DATA flags when none is named")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_]+", args.split):
        parser.error(f"--split must be letters, digits or _ (it names files and metric keys), got {args.split!r}")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.robustness_max_images < 1:
        parser.error("--robustness-max-images must be at least 1 (a number at least the split's size takes it whole)")
    unknown = [a for a in args.shortcut_test or [] if a not in FAMILIES]
    if unknown:
        parser.error(f"--shortcut-test: unknown attribute(s) {unknown}; choose from: {', '.join(FAMILIES)}")
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    model_dir = Path(args.model).expanduser()
    if args.update_card and not model_dir.is_dir():
        raise ConfigError("--update-card needs MODEL to be a local run folder (its card lives there)")
    out_dir = Path(args.output_dir) if args.output_dir else (
        model_dir if model_dir.is_dir() else Path("outputs") / "eval" / args.model.replace("/", "__"))
    run_dir = model_dir if args.update_card else None
    if not args.overwrite:
        refuse_recorded_split(args.split, out_dir, run_dir)
    replaced = recorded_split(args.split, out_dir, run_dir)
    training_args = evaluation_arguments(out_dir, args.batch_size, args.preprocess)
    setup_logging(training_args)
    model, processor = load_model(args.model, args.revision, args.backend)
    image_side = processor_image_size(processor)
    found, split = evaluation_split(args.split, {int(k): v for k, v in model.config.id2label.items()}, image_side,
                                    args.data, args.config, args.num_images, args.image_size, args.seed,
                                    args.cache_dir, model_dir if model_dir.is_dir() else None)
    pos_label = resolve_positive_label(split.labels, args.positive_label)
    trainer = evaluation_trainer(model, processor, training_args, args.preprocess, pos_label)

    def view(ds: Any, name: str) -> Any:
        return eval_view(ds, name, split.image_column, found.label_column, processor, args.preprocess,
                         args.cache_dir, args=training_args)

    evaluated = evaluate_split(trainer, view(split.dataset, args.split), split, args.split, pos_label, out_dir,
                               extra_metrics={f"{args.split}_backend": args.backend},  # which graph, for the card
                               source=found.public_name, maps=args.error_maps)
    if args.shortcut_test is not None:  # every process predicts its share of the counterfactuals
        flagged = list(args.shortcut_test) or audit_flags(split, evaluated, found.source)
        shortcut_test(trainer, view, flagged, split, evaluated, image_side, out_dir)
    if args.robustness and trainer.is_world_process_zero():
        robustness_split(model, split, evaluated, processor, out_dir, args.robustness_max_images, args.seed,
                         args.error_maps, batch_size=args.batch_size)
    if trainer.is_world_process_zero():
        logger.info("%s: %d images from %s at %.1f images/s with %d process(es); results in %s", args.split,
                    len(split.dataset), found.source, evaluated.metrics[f"{args.split}_samples_per_second"],
                    training_args.world_size, out_dir)
        # --overwrite: the earlier split's files this evaluation did not write again (a gallery of
        # errors it no longer makes) would be read as its own.
        for path, mtime in replaced.items():
            if path.is_file() and path.stat().st_mtime_ns == mtime:
                path.unlink()
        if args.update_card:
            logger.info("model card: %s", add_split_to_card(model_dir, out_dir, args.split))
    return evaluated.metrics


def recorded_split(split: str, out_dir: Path, run_dir: Optional[Path]) -> Dict[Path, int]:
    """{file: mtime in ns} of the split's files already in the output folder and in the run folder
    --update-card copies them into."""
    folders = [f for f in (out_dir, run_dir) if f is not None and f.is_dir()]
    return {path: path.stat().st_mtime_ns for folder in folders for path in split_files(folder, split)}


def refuse_recorded_split(split: str, out_dir: Path, run_dir: Optional[Path]) -> None:
    """A split's files already in the output folder, or in the run folder --update-card copies them
    into, are a finished evaluation's record (train.py's test split, an earlier --split): replacing
    them would make the card's figures describe other images. Checked before the model is loaded."""
    for folder in (out_dir, run_dir):
        held = split_files(folder, split) if folder is not None and folder.is_dir() else []
        if held:
            where = "the run folder" if any((folder / m).is_file() for m in RUN_MARKERS) else "the output folder"
            elsewhere = "" if run_dir is not None else ", write it elsewhere (--output-dir DIR)"
            raise ConfigError(f"{held[0]} exists: {where} {folder} already holds a '{split}' split "
                              f"({len(held)} files), which this evaluation would replace. Name it another split "
                              f"(e.g. --split other){elsewhere}, or pass --overwrite to replace it")


def audit_flags(split: SplitData, evaluated: EvaluatedSplit, source: str) -> List[str]:
    """--shortcut-test without names: the attributes the audit's rules flag on the evaluated data."""
    ok = [k for k, f in enumerate(split.inspections) if f.status == "ok"]
    names = [split.labels[evaluated.label_ids[k]] for k in ok]
    found = shortcut_findings([split.inspections[k] for k in ok], [split.attributes[k] for k in ok], names,
                              DataConfig(), seed=0)
    flagged = flagged_attributes(found)
    logger.info("shortcut test: the audit of %s flags %s", source, flagged or "nothing")
    return flagged


def cli(argv: Optional[List[str]] = None) -> int:
    """`python evaluate.py`: 0 done, 2 a usage or config error (as python -m facemask's)."""
    try:
        main(argv)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
