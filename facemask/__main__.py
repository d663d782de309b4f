"""Command-line tools: synth (write the synthetic set), card (regenerate a card), push (to the Hub),
predict (classify image files), detect (every face in photos and videos), compare (two runs on the
same images), audit (check a config's data), search (hyperparameters), repeat (a config over seeds
or folds), label-issues (training labels that are probably wrong), explain (where in an image the
model looks), export (ONNX), demo (a Gradio page for a run or a Hub model), space (that page as a
Hugging Face Space), pretrain (masked image modelling on unlabelled images: pretrain.py), serve (an
HTTP JSON service).

Each subcommand imports what it needs when it runs, so `--help` answers at once (no torch).
Exit codes: 0 done; 1 the work failed (a push refused, an export whose parity fails, a skipped
input, an audit that refuses the data); 2 a usage or config error (bad arguments, a config key or
value, a model, run folder or data that cannot be found)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from facemask.config.schema import ConfigError

if TYPE_CHECKING:
    from facemask.runtime.decision import DecisionRule


def _synth(args: argparse.Namespace) -> int:
    from facemask.data.synthetic import write_image_folder

    root = write_image_folder(args.directory, args.num_images, args.image_size, args.seed, args.format, args.style)
    print(f"wrote {args.num_images} images to {root} (one sub-folder per class)")
    return 0


def _card(args: argparse.Namespace) -> int:
    from facemask.publish.card import write_card

    print(f"wrote {write_card(args.run_dir, args.output, args.model_id)}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from facemask.publish.card import write_card
    from facemask.publish.hub import PushError, check_write_access, push_run

    if not args.handler and (args.threshold is not None or args.positive_label is not None):
        raise ConfigError("--threshold and --positive-label set the decision rule of --handler: add --handler")
    try:
        check_write_access("python -m facemask push")
        if args.handler:
            # After the access check: nothing is written into the run folder for a push that cannot happen.
            from facemask.publish.endpoint import add_handler

            for path in add_handler(Path(args.run_dir), args.threshold, args.positive_label):
                print(f"wrote {path}")
        # The card names the Hub id in its usage snippet, so it is rewritten for this id first.
        write_card(args.run_dir, model_id=args.model_id)
        url = push_run(args.run_dir, args.model_id, private=args.private, revision=args.revision)
    except PushError as err:
        return _failed(err)
    print(f"pushed {args.run_dir} to {url}")
    return 0


def _rule(args: argparse.Namespace, labels: List[str]) -> "DecisionRule":
    """--threshold / --positive-label of predict and detect, checked against the model's labels."""
    from facemask.runtime.decision import decision_rule

    rule = decision_rule(Path(args.model), labels, args.threshold, args.positive_label)
    if rule.threshold is not None:  # a named point's number is in a file the user has not opened
        print(f"decision rule: {rule.positive_label} where P({rule.positive_label}) >= {rule.threshold:.6g} "
              f"(--threshold {args.threshold!r}), else the other class", file=sys.stderr)
    return rule


def _report_skipped(skipped: List[Any], total: int) -> int:
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} of {total} inputs skipped", file=sys.stderr)
    return 1 if skipped else 0


def _face_check(args: argparse.Namespace) -> Any:
    """predict's and explain's check that each input is one face filling the image (a warning
    otherwise), and with --crop-face the crop of its largest face with detect's margin."""
    from facemask.detection.crops import run_margin
    from facemask.detection.detectors import load_detector
    from facemask.detection.framing import FaceCheck

    detector = load_detector()
    margin = None
    if args.crop_face:
        margin, how = run_margin(args.model, detector)
        print(f"--crop-face: the largest face of each image, margin {margin:g} ({how})", file=sys.stderr)
    return FaceCheck(detector, margin)


def _add_face_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--crop-face", action="store_true",
                        help="classify each image's largest face, cropped as detect crops faces, instead of the "
                             "whole image (an image without a face is classified whole, with a warning)")


def _predict(args: argparse.Namespace) -> int:
    from facemask.evaluation.loading import load_classifier
    from facemask.runtime.files import collect_paths, format_rows, write_rows
    from facemask.runtime.predict import predict_files

    classifier = load_classifier(args.model, backend=args.backend)
    rule = _rule(args, classifier.labels)
    faces = _face_check(args)
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
    return _report_skipped(skipped, len(rows) + len(skipped))


def _explain(args: argparse.Namespace) -> int:
    from facemask.evaluation.explain import command

    return command(args, _face_check(args))


def _detect(args: argparse.Namespace) -> int:
    from facemask.detection.crops import describe, margin_from_images, run_margin
    from facemask.detection.detectors import load_detector
    from facemask.detection.scenes import OutputError, SceneClassifier, detect_files, write_table
    from facemask.evaluation.loading import load_classifier
    from facemask.run_folder import DETECTIONS_CSV, DETECTIONS_JSON
    from facemask.runtime.files import collect_paths

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
    rule = _rule(args, classifier.labels)
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
    try:
        report = detect_files(scene, paths, out, args.every, args.overwrite)
    except OutputError as err:
        return _failed(err)
    report.skipped = skipped + report.skipped
    for note in report.notes:
        print(note)
    tables = write_table(report, scene.labels, out)
    print(report.summary(scene.labels))
    print(f"wrote {', '.join(str(p) for p in tables)} and {len(report.written)} annotated files to {out}")
    return _report_skipped(report.skipped, len(found) + len(missing))


def _compare(args: argparse.Namespace) -> int:
    from facemask.evaluation.compare import compare_runs, comparison_table
    from facemask.run_folder import write_json

    result = compare_runs(args.run_a, args.run_b, args.split)
    print(comparison_table(result))
    if args.output:
        write_json(Path(args.output), result)
        print(f"wrote {args.output}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from facemask.config.loading import load_config
    from facemask.data.audit import refusal, summary_markdown, write_audit
    from facemask.data.prepare import prepare_data
    from facemask.pipeline.processor import load_image_processor, processor_image_size
    from facemask.run_folder import AUDIT_JSON, AUDIT_SUFFIX, run_held

    cfg = load_config(args.config, args.overrides)
    cfg.data.audit = True
    # A check before training never writes into a run's folder, whose audit is of the data it trained on.
    out = Path(args.output) if args.output else Path(f"{cfg.output_dir}{AUDIT_SUFFIX}")
    held = run_held(out)
    if held:
        raise ConfigError(f"{out} holds a run ({held}): the audit is written to a folder of its own; choose "
                          "another --output")
    side = processor_image_size(load_image_processor(cfg.model))
    report = prepare_data(cfg.data, cfg.seed, side).report
    write_audit(report, out)
    print(summary_markdown(report))
    print(f"full report: {AUDIT_JSON.path(out)}")
    reason = refusal(report)
    if reason:
        print(reason, file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from facemask.publish.export import ExportError, export
    from facemask.run_folder import ONNX_DIR, PARITY

    try:
        result = export(args.run_dir, args.output, args.opset, args.quantize, args.tolerance,
                        args.max_accuracy_drop, args.data, args.split, args.max_images)
    except ExportError as err:
        return _failed(err)
    fp32 = result["fp32"]
    print(f"parity on {result['images']}: max |logit difference| {fp32['max_abs_logit_diff']:.2g}, top-1 agreement "
          f"{fp32['top1_agreement']:.4f}, accuracy {fp32['accuracy_pytorch']:.4f} (PyTorch) / "
          f"{fp32['accuracy_onnx']:.4f} (ONNX); {fp32['images_per_s_onnx']:.0f} vs {fp32['images_per_s_pytorch']:.0f} "
          "images/s (onnxruntime vs PyTorch, CPU)")
    int8 = result.get("int8")
    if int8:
        verdict = "kept" if int8["kept"] else f"removed (over --max-accuracy-drop {int8['max_accuracy_drop_points']})"
        print(f"int8: accuracy {int8['accuracy_onnx']:.4f} ({-int8['accuracy_drop_points']:+.2f} points), "
              f"{int8['speedup_vs_onnx_fp32']:.2f}x the fp32 graph's speed: {verdict}")
    out = Path(args.output) if args.output else Path(args.run_dir) / ONNX_DIR
    print(f"wrote {', '.join(result['files'])} and {Path(PARITY.name).name} to {out}")
    return 0


def _bool(value: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _demo(args: argparse.Namespace) -> int:
    from facemask.publish.demo import launch

    if args.host not in ("127.0.0.1", "localhost"):
        print(f"warning: --host {args.host}: the page is reachable from other machines", file=sys.stderr)
    if args.map == "gradcam" and args.backend != "torch":
        raise ConfigError("--map gradcam needs the model's layers: use --backend torch, or --map ablation")
    launch(args.model, args.host, args.port, args.share, args.backend, args.revision, args.map)
    return 0


def _space(args: argparse.Namespace) -> int:
    from facemask.publish.hub import PushError, check_write_access
    from facemask.publish.space import check_space_model, push_space, space_files, space_model_id, write_space
    from facemask.run_folder import SPACE_DIR

    try:
        model_id = space_model_id(args.run_dir, args.model_id)
        if not args.no_push:  # before anything is written: a push that cannot happen leaves no files behind
            check_write_access("python -m facemask space")
            check_space_model(model_id, args.revision)
        files = space_files(args.run_dir, model_id, args.revision)
        folder = write_space(files, args.output or SPACE_DIR.path(Path(args.run_dir)))
        print(f"wrote the Space's {len(files)} files to {folder}")
        if args.no_push:
            return 0
        url = push_space(files, args.space_id, folder, model_id, args.revision, private=args.private)
    except PushError as err:
        return _failed(err)
    print(f"pushed the Space {args.space_id}: {url}\nIt loads {model_id} from the Hub; a private model needs a Space "
          "secret HF_TOKEN that can read it.")
    return 0


def _cache(args: argparse.Namespace) -> int:
    from facemask.data.storage import cache_root, human_bytes
    from facemask.pipeline.cache_entries import clear, kept_entries, table

    root = cache_root(args.cache_dir)
    if args.action == "list":
        print(f"{root}:\n{table(kept_entries(root))}")
        return 0
    removed = clear(root, args.older_than)
    for entry in removed:
        print(f"removed {entry.kind} {entry.path.name}")
    print(f"removed {len(removed)} entries, {human_bytes(sum(e.bytes for e in removed))}, from {root}")
    return 0


def _failed(err: Exception) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 1


def _add_synth(commands: Any) -> None:
    synth = commands.add_parser("synth", help="write the synthetic face-mask set as an image folder")
    synth.add_argument("directory")
    synth.add_argument("--num-images", type=int, default=1000)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--style", choices=["studio", "street"], default="studio",
                       help="street: smaller, off-centre, tilted faces in harsher light (a shifted set)")
    synth.add_argument("--format", choices=["png", "jpg", "mixed"], default="mixed",
                       help="file format; mixed alternates JPEG and PNG independently of the class")
    synth.set_defaults(func=_synth)


def _add_card(commands: Any) -> None:
    card = commands.add_parser("card", help="regenerate a run's model card from the files it left")
    card.add_argument("run_dir", help="a training run's output folder")
    card.add_argument("--output", help="where to write the card (default RUN_DIR/README.md); figures go beside it")
    card.add_argument("--model-id", help="Hub id to name in the card (default: the run's hub.model_id)")
    card.set_defaults(func=_card)


def _add_push(commands: Any) -> None:
    push = commands.add_parser("push", help="push a finished run (model, card, results, plots) to the Hub")
    push.add_argument("run_dir")
    push.add_argument("--model-id", required=True, help="e.g. your-name/vit-facemask")
    push.add_argument("--revision", help="branch to push to (created if missing)")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True,
                            help="create the repository as private (default)")
    visibility.add_argument("--public", dest="private", action="store_false")
    push.add_argument("--handler", action="store_true",
                      help="add handler.py (a Hugging Face Inference Endpoints EndpointHandler) that answers as "
                           "predict does, with the decision rule below")
    push.add_argument("--threshold", metavar="T", help="with --handler: as predict's --threshold (a number or a row "
                                                       "of operating_points.json)")
    push.add_argument("--positive-label", help="with --handler: as predict's --positive-label")
    push.set_defaults(func=_push)


def _add_audit(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check a config's data: bad files, leaks, shortcuts, balance")
    audit.add_argument("config")
    audit.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train_dir=photos")
    audit.add_argument("--output", help="folder for data_audit.json and data_audit.md (default: OUTPUT_DIR-audit; "
                                        "never a run's folder)")
    audit.set_defaults(func=_audit)


def _add_predict(commands: Any) -> None:
    predict = commands.add_parser("predict", help="classify image files; exit code 1 if any input was skipped")
    predict.add_argument("model", help="a training run's output folder or a Hub model id")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive) or globs")
    predict.add_argument("--output", help="write FILE.csv or FILE.json instead of printing")
    _add_model_options(predict)
    _add_face_options(predict)
    predict.set_defaults(func=_predict)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threshold", metavar="T",
                        help="predict the positive class when its probability is >= T: a number, or a row of the "
                             "run's operating_points.json ('best F1', 'precision>=0.99', 'recall>=0.99')")
    parser.add_argument("--positive-label", help="the class a numeric --threshold applies to (default: the run's "
                                                 "positive class, else the mask class); a named operating point "
                                                 "applies to its table's class")
    parser.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                        help="run PyTorch, or the run's exported onnx/model.onnx (or model_quantized.onnx) "
                             "with onnxruntime on the CPU")


def _add_detect(commands: Any) -> None:
    from facemask.detection.crops import DEFAULT_MARGIN  # no torch

    detect = commands.add_parser("detect", help="find every face in photos and videos, classify it, draw it; exit "
                                                "code 1 if any input was skipped")
    detect.add_argument("model", help="a training run's output folder or a Hub model id")
    detect.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image and video files (mp4, mov, avi, webm, mkv, animated GIF/WebP/PNG), folders "
                             "(recursive) or globs")
    detect.add_argument("--output", default="detections", help="folder for detections.csv, detections.json and the "
                                                               "annotated copies (default ./detections)")
    detect.add_argument("--overwrite", action="store_true", help="write over an earlier detect's table in --output")
    _add_model_options(detect)
    detect.add_argument("--detector", default="retinaface", help="the face detector (retinaface)")
    detect.add_argument("--detector-threshold", type=float, default=0.6, help="the detector's score a face needs")
    detect.add_argument("--min-face", type=int, default=20, metavar="PX",
                        help="ignore faces whose box's shorter side is under PX full-resolution pixels")
    detect.add_argument("--max-side", type=int, default=1280, metavar="PX",
                        help="shrink larger photos and frames to this side for the detector (crops come from the "
                             "full resolution)")
    margin = detect.add_mutually_exclusive_group()
    margin.add_argument("--margin", type=float,
                        help="room around each face box in the crop, a fraction of the box's size on each side "
                             f"(default: measured on the run's training images where they are here, else "
                             f"{DEFAULT_MARGIN})")
    margin.add_argument("--margin-from", metavar="TRAIN_DIR",
                        help="measure --margin on these training images: how much of each one its face fills")
    detect.add_argument("--no-square", action="store_true", help="crop the box's shape instead of a square")
    detect.add_argument("--every", type=int, default=1, metavar="N", help="analyse every Nth video frame")
    detect.set_defaults(func=_detect)


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser("compare", help="two runs on the same images: accuracy difference with its "
                                                  "bootstrap interval, McNemar's exact test")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument("--split", default="test", help="validation, test or an extra test set's name (default test)")
    compare.add_argument("--output", metavar="FILE.json", help="also write the comparison as JSON")
    compare.set_defaults(func=_compare)


def _add_export(commands: Any) -> None:
    from facemask.publish.export import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_OPSET, DEFAULT_TOLERANCE  # no torch

    export = commands.add_parser("export", help="export a run to ONNX, with parity checked on its validation images")
    export.add_argument("run_dir")
    export.add_argument("--output", help="folder for model.onnx and parity.json (default RUN_DIR/onnx)")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    export.add_argument("--quantize", choices=["int8"], help="also write model_quantized.onnx (dynamic int8)")
    export.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest |logit difference| allowed between PyTorch and the fp32 graph")
    export.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP,
                        help="points of accuracy int8 may lose against PyTorch, else it is removed")
    export.add_argument("--data", help="image folder to check parity on (default: the run's own split)")
    export.add_argument("--split", default="validation", help="the split to check parity on (default validation)")
    export.add_argument("--max-images", type=int, help="check parity on at most this many images")
    export.set_defaults(func=_export)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser("demo", help="a Gradio page that classifies uploads and webcam frames and shows the "
                                            "run's metrics")
    demo.add_argument("model", help="a training run's output folder or a Hub model id")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    demo.add_argument("--share", type=_bool, nargs="?", const=True, default=False, metavar="true|false",
                      help="also open a public gradio.live link (default false)")
    demo.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch")
    demo.add_argument("--revision", help="branch, tag or commit of a Hub model")
    demo.add_argument("--map", choices=["ablation", "gradcam", "none"], default="ablation",
                      help="the Classify tab's explanation map (docs/evaluation.md; gradcam: one backward pass, for "
                           "large models on a CPU; not with an ONNX backend)")
    demo.set_defaults(func=_demo)


def _add_space(commands: Any) -> None:
    space = commands.add_parser("space", help="write and push a Hugging Face Space serving the demo page of a pushed "
                                              "model")
    space.add_argument("run_dir")
    space.add_argument("--space-id", required=True, help="e.g. your-name/facemask-demo")
    space.add_argument("--model-id", help="the model's Hub id (default: the run's hub.model_id)")
    space.add_argument("--revision", help="the model's branch, tag or commit the Space loads")
    space.add_argument("--output", help="folder to write the Space to (default RUN_DIR/space)")
    space.add_argument("--no-push", action="store_true", help="only write the folder")
    space_visibility = space.add_mutually_exclusive_group()
    space_visibility.add_argument("--private", dest="private", action="store_true", default=True,
                                  help="create the Space as private (default)")
    space_visibility.add_argument("--public", dest="private", action="store_false")
    space.set_defaults(func=_space)


def _add_cache(commands: Any) -> None:
    cache = commands.add_parser("cache", help="what the cache folder keeps (preprocessing caches, audit inspections, "
                                              "drawn sets): list it, or clear it")
    cache.add_argument("action", choices=["list", "clear"])
    cache.add_argument("--older-than", type=float, metavar="DAYS",
                       help="clear only what no run has used for DAYS days")
    cache.add_argument("--cache-dir", help="the cache folder (data.preprocess_dir; default: <datasets cache>/"
                                           "facemask-preprocessed)")
    cache.set_defaults(func=_cache)


# Each subcommand's name and the function that adds its parser.
# Subcommands whose parser (add_arguments) and body (command) live in the module of their concern,
# imported only when the subcommand is built.
OWNED = {
    "search": ("facemask.training.search", "hyperparameter search (Optuna) over the config's search.space"),
    "repeat": ("facemask.training.repeat", "run a config once per seed (or per cross-validation fold): every run's "
                                           "metrics, their mean, standard error and range"),
    "label-issues": ("facemask.training.label_issues", "training labels that are probably wrong: K fold models, "
                                                       "out-of-fold probabilities, confident learning (cleanlab)"),
    "serve": ("facemask.publish.serve", "an HTTP JSON service: POST images to /predict, a photo to /detect; /health, "
                                        "/ready, /metrics, /docs"),
    "train": ("facemask.training.run", "fine-tune a classifier on a config (as python train.py)"),
    "pretrain": ("facemask.training.pretrain", "masked image modelling (SimMIM) on images without labels: a backbone "
                                               "that train fine-tunes (model.name_or_path=FOLDER)"),
}


def _add_explain(commands: Any) -> None:
    from facemask.evaluation.explain import add_arguments

    # Not in OWNED: the face check is detection's, a layer above the explanation's module.
    explain = commands.add_parser("explain", help="where in each image the model looks: an overlay per image and "
                                                  "explanations.json; exit code 1 if any input was skipped or the "
                                                  "--sanity check failed")
    add_arguments(explain)
    _add_face_options(explain)
    explain.set_defaults(func=_explain)


def _owned(name: str) -> Callable[[Any], None]:
    def add(commands: Any) -> None:
        module, help_text = OWNED[name]
        owner = importlib.import_module(module)
        parser = commands.add_parser(name, help=help_text)
        owner.add_arguments(parser)
        parser.set_defaults(func=owner.command)
    return add


COMMANDS = {"synth": _add_synth, "card": _add_card, "push": _add_push, "audit": _add_audit, "predict": _add_predict,
            "detect": _add_detect, "compare": _add_compare, "export": _add_export, "demo": _add_demo,
            "space": _add_space, "cache": _add_cache, "search": _owned("search"), "repeat": _owned("repeat"),
            "explain": _add_explain, "label-issues": _owned("label-issues"), "pretrain": _owned("pretrain"),
            "serve": _owned("serve"), "train": _owned("train")}


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of `only`: some parsers import their module's defaults,
    and predict and detect must start where only requirements-serve.txt is installed."""
    parser = argparse.ArgumentParser(prog="python -m facemask", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, add in COMMANDS.items():
        if only is None or name == only:
            add(commands)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in commands:
        # Each subcommand parses its own arguments, options and `key=value` overrides in any order
        # (argparse cannot parse intermixed through subparsers).
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
    else:
        args = parser.parse_args(argv)
    args.argv = argv[1:]  # as given: a subcommand that hands its arguments to an entry point (pretrain)
    if getattr(args, "num_images", 1) < 1:
        parser.error("--num-images must be at least 1")
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def console() -> int:
    """A process's entry: `python -m facemask` and the `facemask` console script (pyproject.toml)."""
    from facemask.progress import quiet_library_bars

    quiet_library_bars()  # a process's own output: off a terminal, no library redraws bars in it
    return main()


if __name__ == "__main__":
    sys.exit(console())
