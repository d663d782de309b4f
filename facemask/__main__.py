"""Command-line tools: `python -m facemask synth DIR --num-images N`."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import write_image_folder

    root = write_image_folder(args.directory, args.num_images, args.image_size, args.seed, args.format)
    print(f"wrote {args.num_images} images to {root} (one sub-folder per class)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facemask", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    synth = commands.add_parser("synth", help="write the synthetic face-mask set as an image folder")
    synth.add_argument("directory")
    synth.add_argument("--num-images", type=int, default=1000)
    synth.add_argument("--image-size", type=int, default=128)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--format", choices=["png", "jpg", "mixed"], default="mixed",
                       help="file format; mixed alternates JPEG and PNG independently of the class")
    synth.set_defaults(func=_synth)
    args = parser.parse_args(argv)
    if getattr(args, "num_images", 1) < 1:
        parser.error("--num-images must be at least 1")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
