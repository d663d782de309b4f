"""Evaluate a saved or Hub model on an image folder, a Hub dataset or the synthetic set: the entry
point over facemask/training/evaluate.py.

    python evaluate.py MODEL --data DATA [--split test] [--output-dir DIR] [--batch-size 64]
    accelerate launch evaluate.py MODEL --data DATA      (each sample is counted once)

`python evaluate.py --help` says more.
"""

import sys

from facemask.training.evaluate import cli, main

__all__ = ["main"]  # tests and scripts call evaluate.main(argv)

if __name__ == "__main__":
    sys.exit(cli())
