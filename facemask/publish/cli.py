"""What leaves the machine, as commands: `card` (regenerate a run's model card), `push` (a run to
the Hub), `export` (ONNX with parity, int8), `demo` (a Gradio page), `space` (that page as a Hugging
Face Space). __main__.py's table names `facemask.publish.cli:NAME`, each a namespace with
`add_arguments` and `command`; a command imports its modules when it runs, so `--help` is quick."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from facemask.runtime.model import add_backend_argument
from facemask.web import add_page_arguments, warn_if_reachable


def _add_card_arguments(parser: Any) -> None:
    parser.add_argument("run_dir", help="a training run's output folder")
    parser.add_argument("--output", help="where to write the card (default RUN_DIR/README.md); figures go beside it")
    parser.add_argument("--model-id", help="Hub id to name in the card (default: the run's hub.model_id)")


def _card(args: Any) -> int:
    from facemask.publish.card import write_card

    print(f"wrote {write_card(args.run_dir, args.output, args.model_id)}")
    return 0


def _add_visibility(parser: Any, what: str) -> None:
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=True,
                            help=f"create the {what} as private (default)")
    visibility.add_argument("--public", dest="private", action="store_false")


def _add_push_arguments(parser: Any) -> None:
    from facemask.runtime.decision import add_rule_arguments

    parser.add_argument("run_dir")
    parser.add_argument("--model-id", required=True, help="e.g. your-name/vit-facemask")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    _add_visibility(parser, "repository")
    parser.add_argument("--handler", action="store_true",
                        help="add handler.py (a Hugging Face Inference Endpoints EndpointHandler) that answers as "
                             "predict does, with the decision rule below")
    add_rule_arguments(parser, prefix="with --handler, as predict's: ")


def _push(args: Any) -> int:
    from facemask.config.schema import ConfigError
    from facemask.publish.card import write_card
    from facemask.publish.hub import check_write_access, push_run

    if not args.handler and (args.threshold is not None or args.positive_label is not None):
        raise ConfigError("--threshold and --positive-label set the decision rule of --handler: add --handler")
    check_write_access("python -m facemask push")
    if args.handler:
        # After the access check: nothing is written into the run folder for a push that cannot happen.
        from facemask.publish.endpoint import add_handler

        for path in add_handler(Path(args.run_dir), args.threshold, args.positive_label):
            print(f"wrote {path}")
    # The card names the Hub id in its usage snippet, so it is rewritten for this id first.
    write_card(args.run_dir, model_id=args.model_id)
    url = push_run(args.run_dir, args.model_id, private=args.private, revision=args.revision)
    print(f"pushed {args.run_dir} to {url}")
    return 0


def _add_export_arguments(parser: Any) -> None:
    from facemask.publish.export import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_OPSET, DEFAULT_TOLERANCE  # no torch

    parser.add_argument("run_dir")
    parser.add_argument("--output", help="folder for model.onnx and parity.json (default RUN_DIR/onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--quantize", choices=["int8"], help="also write model_quantized.onnx (dynamic int8)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest |logit difference| allowed between PyTorch and the fp32 graph")
    parser.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP,
                        help="points of accuracy int8 may lose against PyTorch, else it is removed")
    parser.add_argument("--data", help="image folder to check parity on (default: the run's own split)")
    parser.add_argument("--split", default="validation", help="the split to check parity on (default validation)")
    parser.add_argument("--max-images", type=int, help="check parity on at most this many images")


def _export(args: Any) -> int:
    from facemask.publish.export import export
    from facemask.run_folder import ONNX_DIR, PARITY

    result = export(args.run_dir, args.output, args.opset, args.quantize, args.tolerance, args.max_accuracy_drop,
                    args.data, args.split, args.max_images)
    fp32 = result["fp32"]
    print(f"parity on {result['images']}: max |logit difference| {fp32['max_abs_logit_diff']:.2g}, top-1 agreement "
          f"{fp32['top1_agreement']:.4f}, accuracy {fp32['accuracy_pytorch']:.4f} (PyTorch) / "
          f"{fp32['accuracy_onnx']:.4f} (ONNX); {fp32['images_per_s_onnx']:.0f} vs {fp32['images_per_s_pytorch']:.0f} "
          "images/s (onnxruntime vs PyTorch, CPU)")
    int8 = result.get("int8")
    if int8:
        if not int8["kept"]:
            verdict = f"removed (over --max-accuracy-drop {int8['max_accuracy_drop_points']})"
        elif int8["speedup_vs_onnx_fp32"] < 1:
            verdict = ("kept for its size, but slower than the fp32 graph on this machine: use --backend onnx here "
                       "(int8 pays where the CPU has fast int8 arithmetic; measure it there)")
        else:
            verdict = "kept (--backend onnx-int8)"
        print(f"int8: accuracy {int8['accuracy_onnx']:.4f} ({-int8['accuracy_drop_points']:+.2f} points), "
              f"{int8['speedup_vs_onnx_fp32']:.2f}x the fp32 graph's speed: {verdict}")
    out = Path(args.output) if args.output else Path(args.run_dir) / ONNX_DIR
    print(f"wrote {', '.join(result['files'])} and {Path(PARITY.name).name} to {out}")
    return 0


def _add_demo_arguments(parser: Any) -> None:
    parser.add_argument("model", help="a training run's output folder or a Hub model id")
    add_page_arguments(parser)
    add_backend_argument(parser)
    parser.add_argument("--revision", help="branch, tag or commit of a Hub model")
    parser.add_argument("--map", choices=["ablation", "gradcam", "none"], default="ablation",
                        help="the Classify tab's explanation map (docs/evaluation.md; gradcam: one backward pass, for "
                             "large models on a CPU; not with an ONNX backend)")


def _demo(args: Any) -> int:
    from facemask.config.schema import ConfigError
    from facemask.publish.demo import launch

    warn_if_reachable(args)
    if args.map == "gradcam" and args.backend != "torch":
        raise ConfigError("--map gradcam needs the model's layers: use --backend torch, or --map ablation")
    launch(args.model, args.host, args.port, args.share, args.backend, args.revision, args.map)
    return 0


def _add_space_arguments(parser: Any) -> None:
    parser.add_argument("run_dir")
    parser.add_argument("--space-id", required=True, help="e.g. your-name/facemask-demo")
    parser.add_argument("--model-id", help="the model's Hub id (default: the run's hub.model_id)")
    parser.add_argument("--revision", help="the model's branch, tag or commit the Space loads")
    parser.add_argument("--output", help="folder to write the Space to (default RUN_DIR/space)")
    parser.add_argument("--no-push", action="store_true", help="only write the folder")
    _add_visibility(parser, "Space")


def _space(args: Any) -> int:
    from facemask.publish.hub import check_write_access
    from facemask.publish.space import check_space_model, push_space, space_files, space_model_id, write_space
    from facemask.run_folder import SPACE_DIR

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
    print(f"pushed the Space {args.space_id}: {url}\nIt loads {model_id} from the Hub; a private model needs a Space "
          "secret HF_TOKEN that can read it.")
    return 0


card = SimpleNamespace(add_arguments=_add_card_arguments, command=_card)
push = SimpleNamespace(add_arguments=_add_push_arguments, command=_push)
export = SimpleNamespace(add_arguments=_add_export_arguments, command=_export)
demo = SimpleNamespace(add_arguments=_add_demo_arguments, command=_demo)
space = SimpleNamespace(add_arguments=_add_space_arguments, command=_space)
