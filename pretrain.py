"""Pretrain a ViT/BEiT encoder by masked image modelling (SimMIM): the entry point over
facemask/training/pretrain.py.

    python pretrain.py configs/pretrain-quickstart.yaml [section.key=value ...]
        [--resume [CHECKPOINT] | --overwrite] [--force]

`python -m facemask pretrain` is the same; `python pretrain.py --help` says more.
"""

import sys

from facemask.training.pretrain import cli, main

__all__ = ["main"]  # tests and scripts call pretrain.main(argv)

if __name__ == "__main__":
    sys.exit(cli())
