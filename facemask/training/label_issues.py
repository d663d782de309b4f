"""python -m facemask label-issues CONFIG [--folds K] [key=value ...]: the training labels that are
probably wrong, found by confident learning (cleanlab) on out-of-fold probabilities.

1. K fold models, trained as `repeat --folds K` trains them, by its code: one folder each under
   OUTPUT_DIR (fold-N/), a finished fold not run again, duplicate groups on one side of every fold,
   classes stratified; repeat's summary files of the folds beside them.
2. Out-of-fold probabilities. The training images (every image that is not test or an extra test
   set) are the union of the K validation folds, each image in exactly one; fold k's model never
   trained on its validation fold, so fold k's validation predictions (eval_predictions.csv) are
   those images' out-of-fold probabilities. Rows are matched to the training images by content
   digest (the audit's SHA-256): `file` is only a row index for images without a file (the drawn
   set, Hub data), and copies with equal digests are one duplicate group, so in one fold.
3. Confident learning on them (cleanlab; the statistics are evaluation/label_quality.py's).
4. label_issues.csv / .json / .png and exclude.txt in OUTPUT_DIR, and a summary on the console.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from facemask.config.dump import redact
from facemask.config.schema import ConfigError
from facemask.data.exclude import write_exclude_list
from facemask.evaluation.label_quality import (Issues, OutOfFoldError, assemble_out_of_fold, find_issues, noise_table,
                                               warn_if_errors_match_noise, warn_if_uninformed)
from facemask.run_folder import (EXCLUDE_LIST, LABEL_ISSUES_CSV, LABEL_ISSUES_FIGURE, LABEL_ISSUES_JSON, PREDICTIONS,
                                 REPEAT_RESULTS_CSV, prefix_of, write_json)
from facemask.training.repeat import NEAR_CHANCE, RepeatError, output_folder, runs_of, summarise_runs, train_runs, write_outputs
from facemask.training.resume import RunLock, add_force_argument

DEFAULT_FOLDS = 5
# sha256, suggested_probability and fold are what the review page needs: the image by content, the
# out-of-fold probability it shows, and the fold model whose map it draws.
COLUMNS = ("file", "given_label", "suggested_label", "label_quality", "is_issue", "sha256", "suggested_probability",
           "fold")
FIGURE_IMAGES = 16  # the most suspect flagged images drawn in label_issues.png
PRINTED = 5  # and printed on the console
# A fold model chosen by its accuracy on its validation fold (best-checkpoint reload, early stopping)
# would be chosen on the images it then predicts: those predictions would not be out of sample.
FIXED_SCHEDULE = ["training.load_best_model_at_end=false", "training.eval_strategy=no",
                  "recipe.early_stopping_patience=null"]
SELECTION_KEYS = ("training.load_best_model_at_end", "training.eval_strategy", "recipe.early_stopping_patience")
METHOD = {
    "fold_models": "each trained for the config's whole schedule, its last weights kept: no best-checkpoint reload, "
                   "no early stopping, no evaluation on its validation fold before the end",
    "out_of_fold": "each training image predicted by the one fold model whose validation fold it was (the model "
                   "that did not train on it)",
    "is_issue": "cleanlab.filter.find_label_issues(filter_by='prune_by_noise_rate'): confident learning",
    "label_quality": "cleanlab.rank.get_label_quality_scores(method='self_confidence'): the out-of-fold "
                     "probability of the given label (low: suspect)",
    "noise": "cleanlab.count.estimate_joint: the calibrated confident joint p(given label, true label)",
    "suggested_label": "the out-of-fold arg-max",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config")
    parser.add_argument("--folds", type=int, default=DEFAULT_FOLDS, metavar="K",
                        help=f"cross-validation folds, a model each (default {DEFAULT_FOLDS}); every class needs at "
                             "least 2 training images per fold")
    parser.add_argument("overrides", nargs="*",
                        help="dotted overrides for every fold, e.g. training.num_train_epochs=3")
    add_force_argument(parser)


@dataclass
class TrainingImages:
    """Every training image once (the train and validation splits of one fold), in that order."""

    labels: List[str]
    label_ids: np.ndarray
    digests: List[str]
    files: List[str]  # the path relative to the data folder, or sha256:HEX for an image without a file there
    has_file: List[bool]
    rows: List[Tuple[Any, int]]  # (its split's dataset, its row) to open it for the figure
    image_column: str
    folder: Optional[Path]  # the data folder the files are relative to


def data_folder(data: Any) -> Optional[Path]:
    """The folder training images are read from (data.train_dir, or a local data.dataset_name)."""
    if data.synthetic:
        return None
    for candidate in (data.train_dir, data.dataset_name):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def _relative(path: Optional[str], folder: Optional[Path]) -> Optional[str]:
    if not path or folder is None:
        return None
    # A folder of symbolic links (images linked in, not copied) names its images by their links: the
    # targets lie elsewhere. Resolved paths still match a folder reached through a linked parent.
    for image, base in ((Path(os.path.abspath(path)), Path(os.path.abspath(folder))),
                        (Path(path).resolve(), folder.resolve())):
        try:
            return image.relative_to(base).as_posix()
        except ValueError:
            continue
    return None


def _outside(path: Optional[str]) -> Optional[str]:
    return str(Path(path).resolve()) if path and Path(path).is_absolute() and Path(path).is_file() else None


def training_images(cfg: Any, folds: int) -> TrainingImages:
    """The training images as every fold run carves them (fold 0's train + validation, before
    max_train_samples thins a fold's train), with their given labels and content digests."""
    from facemask.data.prepare import prepare_data
    from facemask.data.storage import stored_images
    from facemask.pipeline.processor import load_image_processor, processor_image_size

    data = dataclasses.replace(cfg.data, cv_folds=folds, cv_fold=0, max_train_samples=None)
    # The side the runs inspect at: their inspections (kept by fingerprint) are these.
    side = processor_image_size(load_image_processor(cfg.model))
    prepared = prepare_data(data, cfg.seed, side)
    pool, column, folder = prepared.data, prepared.data.image_column, data_folder(data)
    label_ids, digests, files, has_file, rows = [], [], [], [], []
    for split in ("train", "validation"):
        ds = pool.splits[split]
        label_ids += list(ds[pool.label_column])
        digests += [found.sha256 for found in prepared.inspections[split]]
        row = 0
        for chunk in stored_images(ds, column):
            contents, paths = chunk.field("bytes"), chunk.field("path")
            for i in range(len(chunk)):
                # An image held in the dataset has no file of its own, whatever its `path` says. A file
                # outside the data folder (one data.corrections added) is named by its absolute path.
                path = None if contents[i].is_valid else paths[i].as_py()
                local = _relative(path, folder) or _outside(path)
                files.append(local or f"sha256:{digests[len(files)]}")
                has_file.append(local is not None)
                rows.append((ds, row))
                row += 1
    return TrainingImages(list(pool.labels), np.asarray(label_ids, dtype=np.int64), digests, files, has_file, rows,
                          column, folder)


def check_classes(images: TrainingImages, folds: int) -> None:
    """At least two classes, and 2 training images of each per fold: confident learning needs
    every class in the out-of-fold probabilities, and a fold of a class with none in its training
    part cannot predict it."""
    counts = np.bincount(images.label_ids, minlength=len(images.labels))
    present = [images.labels[c] for c in np.flatnonzero(counts)]
    if len(present) < 2:
        raise ConfigError(f"the training images hold one class ({', '.join(present) or 'none'}): label issues need "
                          "at least two classes")
    fewest = int(counts.argmin())
    count = int(counts[fewest])
    if count < 2 * folds:
        most = count // 2
        fix = (f"use --folds {most} or fewer" if most >= 2 else
               f"add images of it: 2 folds need {4 - count} more")
        raise ConfigError(f"class '{images.labels[fewest]}' has {count} training images: --folds {folds} needs at "
                          f"least 2 per fold ({2 * folds}); {fix}")


def out_of_fold(out: Path, names: Sequence[str], images: TrainingImages) -> Tuple[np.ndarray, np.ndarray]:
    """Per training image, its out-of-fold probabilities (columns in label order) and the index of the
    fold they come from, from the folds' validation prediction files (label_quality assembles them)."""
    prefix = prefix_of("validation")
    fold_rows = []
    for name in names:
        path = PREDICTIONS.path(out / name, prefix)
        if not path.is_file():
            raise ConfigError(f"{path} is missing: {name} has no predictions of its validation fold; "
                              f"{_retrain(out, name)}")
        with path.open(newline="", encoding="utf-8") as f:
            fold_rows.append(list(csv.DictReader(f)))
    try:
        return assemble_out_of_fold(fold_rows, names, images.digests, [images.labels[i] for i in images.label_ids],
                                    images.labels)
    except OutOfFoldError as err:
        if err.fold is None:
            raise ConfigError(f"{err}: give label-issues a new training.output_dir, or delete {out}/fold-* to train "
                              "them again") from None
        name = names[err.fold]
        raise ConfigError(f"{PREDICTIONS.path(out / name, prefix)}: {err}; {_retrain(out, name)}") from None


def _retrain(out: Path, name: str) -> str:
    return f"delete {out / name} and run the same command again to retrain it"


def issue_rows(images: TrainingImages, issues: Issues, probs: np.ndarray, fold_of: np.ndarray) -> List[Dict[str, Any]]:
    """label_issues.csv's rows, most suspect first."""
    return [{"file": images.files[i], "given_label": images.labels[images.label_ids[i]],
             "suggested_label": images.labels[issues.suggested[i]], "label_quality": round(float(issues.quality[i]), 6),
             "is_issue": bool(issues.is_issue[i]), "sha256": images.digests[i],
             "suggested_probability": round(float(probs[i, issues.suggested[i]]), 6), "fold": int(fold_of[i])}
            for i in issues.order]


def suspect_images(images: TrainingImages, rows: List[Dict[str, Any]], order: List[int]) -> List[Any]:
    """The flagged images of the figure, most suspect first, opened upright RGB."""
    import datasets

    from facemask.data.images import load_image

    opened = []
    for row, i in zip(rows[:FIGURE_IMAGES], order):
        if not row["is_issue"]:
            break
        ds, k = images.rows[i]
        item = ds.select([k]).cast_column(images.image_column, datasets.Image(decode=False))[0][images.image_column]
        opened.append(load_image(item, draft_side=256))
    return opened


def suspect_maps(out: Path, names: Sequence[str], fold_of: np.ndarray, shown: List[int], opened: List[Any],
                 suggested: List[int]) -> List[Any]:
    """Each shown suspect's explanation map for its suggested class, from the fold model that did
    not train on it (the one whose probability flagged it): what that model sees in the image."""
    from facemask.evaluation.explain import explain_images
    from facemask.evaluation.loading import load_model

    maps: List[Any] = [None] * len(shown)
    for fold in sorted({int(fold_of[i]) for i in shown}):
        model, processor = load_model(str(out / names[fold]))
        picked = [k for k, i in enumerate(shown) if fold_of[i] == fold]
        for k, found in zip(picked, explain_images(model, processor, [opened[k] for k in picked],
                                                   [suggested[k] for k in picked])):
            maps[k] = found
    return maps


def write_figure(out: Path, images: List[Any], rows: List[Dict[str, Any]],
                 maps: Optional[List[Optional[Any]]] = None) -> bool:
    from facemask.evaluation.figures import label_issues_png

    path = out / LABEL_ISSUES_FIGURE
    path.unlink(missing_ok=True)  # an earlier run's figure of other suspects
    return label_issues_png(images, rows[:len(images)], path, maps)


def retrain_command(config: str, overrides: List[str], out: Path) -> str:
    kept = [o for o in overrides if not o.startswith(("training.output_dir=", "data.exclude="))]
    return redact(" ".join(["python train.py", config, *kept, f"data.exclude={out / EXCLUDE_LIST}",
                            f"training.output_dir={out}-cleaned"]))


def command(args: argparse.Namespace) -> int:
    """`python -m facemask label-issues`; a ConfigError is the CLI's to report (exit code 2)."""
    from facemask.config.loading import load_config

    if args.folds < 2:
        raise ConfigError(f"--folds must be at least 2 (got {args.folds}): each image needs a model that did not "
                          "train on it")
    named = [o.split("=")[0] for o in args.overrides if o.startswith(("data.cv_folds=", "data.cv_fold="))]
    if named:
        raise ConfigError(f"{named[0]} is set by label-issues for each fold: give --folds K instead")
    selection = [o.split("=")[0] for o in args.overrides if o.split("=")[0] in SELECTION_KEYS]
    if selection:
        raise ConfigError(f"{selection[0]} is set by label-issues: each fold model trains a fixed schedule, never "
                          "chosen on the validation fold it then predicts (its probabilities there would not be out "
                          "of sample); leave it out, and set the schedule with training.num_train_epochs")
    runs, overrides = runs_of(argparse.Namespace(folds=args.folds, seeds=None, overrides=args.overrides))
    cfg = load_config(args.config, [*overrides, *FIXED_SCHEDULE])
    if not cfg.data.audit:
        raise ConfigError("label-issues needs data.audit=true: the audit's content digests tell which fold "
                          "predicted which image, and its duplicate groups keep copies in one fold")
    if cfg.data.max_eval_samples is not None:
        raise ConfigError(f"data.max_eval_samples={cfg.data.max_eval_samples} would leave validation images "
                          "without an out-of-fold probability: drop it for label-issues")
    images = training_images(cfg, args.folds)
    check_classes(images, args.folds)
    out = output_folder(args.config, overrides, "the fold models and label issues", "-label-issues")
    # One label-issues per folder, as one run per run folder: another one (on another node too) is refused.
    with RunLock(out, force=args.force):
        return find_and_write(args, out, runs, overrides, images)


def find_and_write(args: argparse.Namespace, out: Path, runs: List[Tuple[str, List[str]]], overrides: List[str],
                   images: TrainingImages) -> int:
    """The fold runs (those not finished earlier), then the flagged labels, their files and figure."""
    from cleanlab import __version__ as cleanlab_version

    argv = ["label-issues", args.config, f"--folds {args.folds}", *overrides]
    try:
        # The folds' own error galleries and robustness are not what label-issues shows: no maps and
        # no corrupted copies for them (its figure maps the suspects); an override given on the
        # command line still wins.
        train_runs(args.config, out, runs, ["data.error_maps=none", "data.robustness=false", *overrides,
                                            *FIXED_SCHEDULE], args.force)
    except RepeatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    folds, summary = summarise_runs(out, runs, folds=True)
    write_outputs(out, args.config, argv, folds, summary, f"{len(runs)} folds")

    names = [name for name, _ in runs]
    probs, fold_of = out_of_fold(out, names, images)
    issues = find_issues(images.label_ids, probs, images.files)
    rows = issue_rows(images, issues, probs, fold_of)
    with (out / LABEL_ISSUES_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    flagged = [i for i in issues.order if issues.is_issue[i]]
    accuracy = {row["run"]: row.get(f"{prefix_of('validation')}_accuracy") for row in folds}
    warn_if_uninformed(accuracy, images.label_ids, NEAR_CHANCE)
    warn_if_errors_match_noise(accuracy, issues.noise)
    per_class = {label: {"images": int((images.label_ids == c).sum()),
                         "issues": int((issues.is_issue & (images.label_ids == c)).sum())}
                 for c, label in enumerate(images.labels)}
    folder = images.folder.name if images.folder else None
    write_json(out / LABEL_ISSUES_JSON, {
        "config": Path(args.config).name, "command": redact("python -m facemask " + " ".join(argv)),
        "folds": args.folds, "fold_accuracy": accuracy, "images": len(rows), "issues": len(flagged),
        "classes": per_class, "noise": noise_table(images.labels, issues.joint, len(rows)),
        "joint": {"labels": images.labels, "rows": "given label", "columns": "true label",
                  "matrix": np.round(issues.joint, 6).tolist()},
        "images_per_fold": np.bincount(fold_of, minlength=len(names)).tolist(),
        "method": {"library": f"cleanlab {cleanlab_version}", **METHOD},
        "files": f"a path relative to the training data folder ({folder})" if folder else None,
        # Where the review page opens the files from, and the fold models that draw its maps.
        "data_folder": str(images.folder.resolve()) if images.folder else None,
        "labels": images.labels, "fold_runs": names,
    })
    header = (f"{len(flagged)} training labels flagged by python -m facemask label-issues ({Path(args.config).name}, "
              f"{args.folds} folds; cleanlab {cleanlab_version}), most suspect first.\n"
              + "Each image is matched by its content digest, so a moved or renamed copy matches too.")
    # Absolute paths: data.exclude reads a relative one from the list's own folder.
    write_exclude_list(out / EXCLUDE_LIST, [(str((images.folder or Path()) / images.files[i]) if images.has_file[i]
                                             else None, images.digests[i]) for i in flagged], header)
    opened = suspect_images(images, rows, issues.order)
    shown = issues.order[:len(opened)]
    suggested = [images.labels.index(rows[k]["suggested_label"]) for k in range(len(opened))]
    drawn = write_figure(out, opened, rows, suspect_maps(out, names, fold_of, shown, opened, suggested))
    print(summary_text(rows, per_class, accuracy, images, issues, out, drawn))
    print(f"review them in the browser, one key each: python -m facemask review {out}")
    print(f"retrain without them (blind): {retrain_command(args.config, overrides, out)}")
    return 0


def summary_text(rows: List[Dict[str, Any]], per_class: Dict[str, Dict[str, int]], accuracy: Dict[str, Any],
                 images: TrainingImages, issues: Issues, out: Path, drawn: bool) -> str:
    flagged = sum(row["is_issue"] for row in rows)
    scores = ", ".join(f"{v:.3f}" if v is not None else "n/a" for v in accuracy.values())
    lines = [f"label-issues: {flagged} of {len(rows)} training images flagged ({100 * flagged / len(rows):.1f}%); "
             f"{len(accuracy)} fold models, validation accuracy {scores}",
             "  flagged per given class: " + ", ".join(f"{label} {c['issues']} of {c['images']}"
                                                       for label, c in per_class.items())]
    noise = noise_table(images.labels, issues.joint, len(rows))
    lines.append("  estimated label noise (given -> true, share of the given class): " + ", ".join(
        f"{n['given_label']} -> {n['true_label']} {100 * n['share_of_given']:.1f}%" for n in noise))
    if flagged:
        lines.append("  most suspect" + (f" (files relative to {images.folder})" if images.folder else "") + ":")
        lines += [f"    {row['file']}: {row['given_label']} -> {row['suggested_label']} "
                  f"(quality {row['label_quality']:.3f})" for row in rows[:min(PRINTED, flagged)]]
    written = [LABEL_ISSUES_CSV, LABEL_ISSUES_JSON] + ([LABEL_ISSUES_FIGURE] if drawn else [])
    lines.append(f"wrote {out / written[0]}, {', '.join(written[1:])}, {EXCLUDE_LIST}; the folds' metrics in "
                 f"{REPEAT_RESULTS_CSV}")
    return "\n".join(lines)
