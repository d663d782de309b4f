"""`python -m facemask predict`: classify image files with a run's model (PyTorch or its ONNX
graph), each input checked to be one face filling the image; exit code 1 if any input was skipped.

A command module, in the top layer (tests/test_architecture.py): it assembles the runtime with the
model loader (evaluation/loading.py, PyTorch only when --backend torch asks) and the face check
(detection/framing.py). With an ONNX backend nothing it reaches imports torch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def add_model_arguments(parser: Any) -> None:
    """The model options predict and detect share: batch size, decision rule, backend."""
    from facemask.runtime.decision import add_rule_arguments
    from facemask.runtime.model import add_backend_argument

    parser.add_argument("--batch-size", type=int, default=32)
    add_rule_arguments(parser)
    add_backend_argument(parser)


def add_arguments(parser: Any) -> None:
    from facemask.detection.framing import add_face_arguments

    parser.add_argument("model", help="a training run's output folder or a Hub model id")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    parser.add_argument("--output", help="write FILE.csv or FILE.json instead of printing")
    add_model_arguments(parser)
    add_face_arguments(parser)


def command(args: Any) -> int:
    from facemask.detection.framing import face_check
    from facemask.evaluation.loading import load_classifier
    from facemask.runtime.decision import rule_from_arguments
    from facemask.runtime.files import collect_paths, format_rows, report_skipped, write_rows
    from facemask.runtime.predict import predict_files

    classifier = load_classifier(args.model, backend=args.backend)
    rule = rule_from_arguments(args, classifier.labels)
    faces = face_check(args)
    paths, skipped = collect_paths(args.paths)
    rows, unreadable = predict_files(classifier, paths, args.batch_size, rule.threshold, rule.positive_label, faces)
    skipped += unreadable
    if args.output:
        write_rows(rows, Path(args.output))
        print(f"wrote {len(rows)} predictions to {args.output}")
    else:
        sys.stdout.write(format_rows(rows))
    warning = faces.warning("predict", len(rows))
    if warning:
        print(warning, file=sys.stderr)
    return report_skipped(skipped, len(rows) + len(skipped))
