"""`python -m facemask detect`: every face in photos and videos found, cropped, classified, tracked
and drawn; the table (detections.csv/.json); exit code 1 if any input was skipped.

A command module, in the top layer (tests/test_architecture.py): it assembles detection with the
model loader (evaluation/loading.py) and predict's model options (runtime/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def add_arguments(parser: Any) -> None:
    from facemask.detection.crops import DEFAULT_MARGIN
    from facemask.runtime.cli import add_model_arguments

    parser.add_argument("model", help="a training run's output folder or a Hub model id")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image and video files (mp4, mov, avi, webm, mkv, animated GIF/WebP/PNG), folders "
                             "(recursive) or globs")
    parser.add_argument("--output", default="detections", help="folder for detections.csv, detections.json and the "
                                                               "annotated copies (default ./detections)")
    parser.add_argument("--overwrite", action="store_true", help="write over an earlier detect's table in --output")
    add_model_arguments(parser)
    parser.add_argument("--detector", default="retinaface", help="the face detector (retinaface)")
    parser.add_argument("--detector-threshold", type=float, default=0.6, help="the detector's score a face needs")
    parser.add_argument("--min-face", type=int, default=20, metavar="PX",
                        help="ignore faces whose box's shorter side is under PX full-resolution pixels")
    parser.add_argument("--max-side", type=int, default=1280, metavar="PX",
                        help="shrink larger photos and frames to this side for the detector (crops come from the "
                             "full resolution)")
    margin = parser.add_mutually_exclusive_group()
    margin.add_argument("--margin", type=float,
                        help="room around each face box in the crop, a fraction of the box's size on each side "
                             f"(default: measured on the run's training images where they are here, else "
                             f"{DEFAULT_MARGIN})")
    margin.add_argument("--margin-from", metavar="TRAIN_DIR",
                        help="measure --margin on these training images: how much of each one its face fills")
    parser.add_argument("--no-square", action="store_true", help="crop the box's shape instead of a square")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="analyse every Nth video frame")


def command(args: Any) -> int:
    from facemask.config.schema import ConfigError
    from facemask.detection.crops import describe, margin_from_images, run_margin
    from facemask.detection.detectors import load_detector
    from facemask.detection.scenes import SceneClassifier, detect_files, write_table
    from facemask.evaluation.loading import load_classifier
    from facemask.run_folder import DETECTIONS_CSV, DETECTIONS_JSON
    from facemask.runtime.decision import rule_from_arguments
    from facemask.runtime.files import collect_paths, report_skipped

    for name, low in (("every", 1), ("max_side", 1), ("batch_size", 1), ("min_face", 0), ("margin", 0)):
        if getattr(args, name) is not None and getattr(args, name) < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least {low}")
    if not 0 < args.detector_threshold <= 1:
        raise ConfigError("--detector-threshold is a detector score: between 0 (excluded) and 1")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file: name a folder")
    previous = [out / n for n in (DETECTIONS_CSV, DETECTIONS_JSON) if (out / n).exists()]
    if previous and not args.overwrite:
        raise ConfigError(f"{previous[0]} exists from an earlier run: pass --overwrite to write over it and the "
                          "annotated copies of the same names, or choose another --output")
    detector = load_detector(args.detector)
    classifier = load_classifier(args.model, backend=args.backend)
    rule = rule_from_arguments(args, classifier.labels)
    if args.margin is not None:
        margin, how = args.margin, "--margin"
    elif args.margin_from:
        found, missing = collect_paths([args.margin_from])
        measured = margin_from_images(found, detector)
        if "margin" not in measured:
            why = missing[0][1] if missing else f"no face found in its {measured['images']} images"
            raise ConfigError(f"--margin-from {args.margin_from}: {why}")
        margin, how = measured["margin"], describe(measured, args.margin_from)
    else:
        margin, how = run_margin(args.model, detector)
    scene = SceneClassifier(classifier, detector, rule.threshold, rule.positive, margin, not args.no_square,
                            args.min_face, args.max_side, args.detector_threshold, args.batch_size)
    found, missing = collect_paths(args.inputs)
    inside = [p for p in found if out.resolve() in p.resolve().parents]
    skipped = missing + [(str(p), f"it is inside the output folder {out}: detect would read its own output")
                         for p in inside]
    paths = [p for p in found if p not in inside]
    out.mkdir(parents=True, exist_ok=True)
    print(f"detect: {len(paths)} files, detector {args.detector}, classifier {args.model} ({args.backend}), "
          f"every {args.every} frame(s); crop margin {margin} ({how}){', square' if scene.square else ''}")
    report = detect_files(scene, paths, out, args.every, args.overwrite)
    report.skipped = skipped + report.skipped
    for note in report.notes:
        print(note)
    tables = write_table(report, scene.labels, out)
    print(report.summary(scene.labels))
    print(f"wrote {', '.join(str(p) for p in tables)} and {len(report.written)} annotated files to {out}")
    return report_skipped(report.skipped, len(found) + len(missing))
