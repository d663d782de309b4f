"""Start-up time of the command line: `python -m facemask [SUBCOMMAND] --help`, wall-clock.

    python bench/cli_help.py [--repeats 7] [--baseline OTHER_CHECKOUT]

Each command runs in a fresh interpreter; with --baseline the same commands run from another
checkout (an older commit, say) interleaved with this one, so both see the same machine load.
Prints the median and range per command, and the ratio baseline / this checkout.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
COMMANDS = [[], ["train"], ["predict"], ["export"], ["search"], ["demo"]]


def once(checkout: Path, args: List[str]) -> float:
    if args == ["train"]:
        command = [sys.executable, "train.py", "--help"]
    else:
        command = [sys.executable, "-m", "facemask", *args, "--help"]
    start = time.perf_counter()
    subprocess.run(command, cwd=checkout, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    args = parser.parse_args()
    checkouts = {"this": REPO, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    times: Dict[str, Dict[str, List[float]]] = {name: {} for name in checkouts}
    for _ in range(args.repeats):
        for command in COMMANDS:
            for name, checkout in checkouts.items():
                times[name].setdefault(" ".join(command) or "(none)", []).append(once(checkout, command))
    print(f"{'subcommand --help':<20} " + " ".join(f"{name + ' median (range), s':>28}" for name in checkouts)
          + ("  baseline/this" if args.baseline else ""))
    for key in times["this"]:
        cells = []
        for name in checkouts:
            values = times[name][key]
            cells.append(f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})".rjust(28))
        ratio = (f"  {statistics.median(times['baseline'][key]) / statistics.median(times['this'][key]):.1f}x"
                 if args.baseline else "")
        print(f"{key:<20} " + " ".join(cells) + ratio)
    print(f"{args.repeats} repeats, interleaved; Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
