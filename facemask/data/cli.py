"""The data's commands: `synth` (write the drawn set as an image folder) and `audit` (check a
config's data before training: bad files, leaks, shortcuts, balance).

A command module, in the top layer (tests/test_architecture.py): audit needs the image processor's
side (pipeline/), a layer above data/. __main__.py's table names `facemask.data.cli:synth` and
`facemask.data.cli:audit`, each a namespace with `add_arguments` and `command`."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def _add_synth_arguments(parser: Any) -> None:
    parser.add_argument("directory")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=["studio", "street"], default="studio",
                        help="street: smaller, off-centre, tilted faces in harsher light (a shifted set)")
    parser.add_argument("--format", choices=["png", "jpg", "mixed"], default="mixed",
                        help="file format; mixed alternates JPEG and PNG independently of the class")
    parser.add_argument("--occluders", type=float, default=0.0, metavar="SHARE",
                        help="the share of faces without a mask drawn with a hand, scarf or phone over the mouth "
                             "and nose (still without_mask; default 0)")


def _synth(args: Any) -> int:
    from facemask.config.schema import ConfigError
    from facemask.data.synthetic import write_image_folder

    if args.num_images < 1:
        raise ConfigError("--num-images must be at least 1")
    if not 0 <= args.occluders <= 1:
        raise ConfigError("--occluders is a share of the faces without a mask: between 0 and 1")
    root = write_image_folder(args.directory, args.num_images, args.image_size, args.seed, args.format, args.style,
                              args.occluders)
    print(f"wrote {args.num_images} images to {root} (one sub-folder per class)")
    return 0


def _add_audit_arguments(parser: Any) -> None:
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.train_dir=photos")
    parser.add_argument("--output", help="folder for data_audit.json and data_audit.md (default: OUTPUT_DIR-audit; "
                                         "never a run's folder)")


def _audit(args: Any) -> int:
    from facemask.config.loading import load_config
    from facemask.config.schema import ConfigError
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


synth = SimpleNamespace(add_arguments=_add_synth_arguments, command=_synth)
audit = SimpleNamespace(add_arguments=_add_audit_arguments, command=_audit)
