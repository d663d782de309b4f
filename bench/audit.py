"""Near-duplicate search of the data audit: time per number of images, multi-index hashing against
the all-pairs comparison it replaced (which is run up to --max-brute-force hashes).

    python bench/audit.py [--sizes 10000 20000 40000 100000 300000 1000000] [--repeats 3]

Hashes are random 256-bit perceptual hashes with 1% of them planted as near copies (distance
0..16 of another), threshold 12 as the audit's default. Each size is timed --repeats times; the
median and the spread (min-max) are printed. Where both methods run, their pairs are compared.
Target: 1M hashes in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import clocked, median_range, write_json  # noqa: E402
from facemask.data.duplicates import brute_force_pairs, near_pairs  # noqa: E402


def hashes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = rng.random((n, 256)) < 0.5
    copies = max(1, n // 100)
    sources, targets = rng.integers(n, size=copies), rng.integers(n, size=copies)
    out[targets] = out[sources]
    for t in targets:
        flips = rng.choice(256, int(rng.integers(0, 17)), replace=False)
        out[t, flips] ^= True
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000, 100_000, 300_000, 1_000_000])
    parser.add_argument("--distance", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-brute-force", type=int, default=40_000)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "audit.json"))
    args = parser.parse_args(argv)
    rows = []
    print(f"near-duplicate search, 256-bit hashes, distance <= {args.distance}, {args.repeats} repeats")
    print(f"{'hashes':>9} {'pairs':>7} {'multi-index s (median, min-max)':>34} {'all pairs s (median, min-max)':>32}  same")
    for n in args.sizes:
        data = hashes(n, seed=n)
        fast, slow = [], []
        same = None
        for _ in range(args.repeats):
            seconds, found = clocked(near_pairs, data, args.distance)
            fast.append(seconds)
            if n <= args.max_brute_force:
                seconds, expected = clocked(brute_force_pairs, data, args.distance)
                slow.append(seconds)
                same = all(np.array_equal(a, b) for a, b in zip(found, expected))
        row = {"hashes": n, "pairs": int(len(found[0])), "multi_index_s": fast, "all_pairs_s": slow, "same_pairs": same}
        rows.append(row)
        spread = lambda v: median_range(v, 2, width=8) if v else "not run"  # noqa: E731
        print(f"{n:>9} {row['pairs']:>7} {spread(fast):>34} {spread(slow):>32}  {same if same is not None else '-'}")
    write_json(args.output, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
