"""Fine-tune a ViT/BEiT face-mask classifier: the entry point over facemask/training/run.py.

    python train.py configs/quickstart.yaml [section.key=value ...] [--resume [CHECKPOINT] | --overwrite] [--force]
    accelerate launch train.py configs/vit-base-facemask.yaml

`python -m facemask train` is the same; `python train.py --help` says more.
"""

import sys

from facemask.training.run import cli, main

__all__ = ["main"]  # tests and scripts call train.main(argv)

if __name__ == "__main__":
    sys.exit(cli())
