"""Cost of the 95% intervals (`facemask/evaluation/intervals.py`) on one core.

    .venv/bin/python bench/bootstrap.py                       # 100,000 predictions, 1,000 and 2,000 resamples
    .venv/bin/python bench/bootstrap.py --images 2000 --repeats 2

Predictions are drawn (two classes, scores rounded to 0.001 so ties occur, as in real outputs);
`split_intervals` runs whole (Wilson intervals, then the stratified bootstrap of balanced accuracy,
F1, ROC-AUC and calibration error) under threadpoolctl's limit of one BLAS/OpenMP thread. Printed:
seconds per call, median (min-max) over the repeats, and the peak size of one chunk of counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: List[str] | None = None) -> Dict[str, Dict[str, float]]:
    from threadpoolctl import threadpool_limits

    from facemask.evaluation.intervals import CHUNK_VALUES, split_intervals

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--resamples", type=int, nargs="+", default=[1000, 2000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    labels = (rng.random(args.images) < 0.5).astype(np.int64)
    positive = np.clip(0.5 + (labels - 0.5) * 0.6 + rng.normal(0, 0.2, args.images), 0, 1).round(3)
    probs = np.stack([1 - positive, positive], axis=1)
    chunk = max(1, CHUNK_VALUES // args.images)
    print(f"{args.images} predictions, one thread; chunks of {chunk} resamples ({chunk * args.images * 8 / 1e6:.0f} MB "
          "of counts)")
    results = {}
    with threadpool_limits(1):
        for resamples in args.resamples:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                split_intervals(probs, labels, 1, resamples=resamples)
                times.append(time.perf_counter() - start)
            results[str(resamples)] = {"seconds": statistics.median(times), "min": min(times), "max": max(times)}
            print(f"  {resamples} resamples: {statistics.median(times):.1f} s ({min(times):.1f}-{max(times):.1f})")
    return results


if __name__ == "__main__":
    main()
