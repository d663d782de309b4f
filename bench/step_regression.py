"""Training-step regression: the quickstart at an earlier commit and now, interleaved on one machine.

    python bench/step_regression.py [--base 324c607] [--repeats 3] [--epochs 3] [--set KEY=VALUE ...]

The earlier commit is checked out in a temporary git worktree (removed at the end) and run with
this checkout's Python. Each commit trains its own configs/quickstart.yaml with the same
learning rate (2e-3, the current config's) and number of epochs, one process a run, into a fresh
folder. One warm-up run per commit (drawing and caches, not counted), then the commits alternate
(base, now, base, now, ...), so drift of the machine's speed hits both alike. Printed per run:
`train_runtime` (the Trainer's measured loop, what #33 calls the training step), the wall time of
the whole command, and test accuracy; then the ratio now / base of each pair, median and range.
A ratio above 1 is a slowdown. Speed is never compared with a figure from another day or machine.

A package the earlier commit pins that this environment lacks (324c607 imported `evaluate`) is
installed without its dependencies into a temporary folder on that commit's PYTHONPATH only;
every other package is the same for both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def missing_pins(checkout: Path) -> list:
    """`name==version` lines of the checkout's requirements.txt whose package is not installed here."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for line in (checkout / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            try:
                version(line.split("==")[0])
            except PackageNotFoundError:
                missing.append(line)
    return missing


def run(checkout: Path, out: Path, epochs: int, cache: Path, overrides: list, extra_path: str = "") -> dict:
    start = time.perf_counter()
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "train.py", "configs/quickstart.yaml", f"training.output_dir={out}",
                           f"training.num_train_epochs={epochs}", "training.learning_rate=2e-3", *overrides],
                          cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{checkout}: train.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    results = json.loads((out / "all_results.json").read_text())
    return {"train_runtime": results["train_runtime"], "wall": wall, "test_accuracy": results["test_accuracy"]}


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="324c607", help="the earlier commit (default: 324c607, named in #33)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per commit, alternating")
    parser.add_argument("--epochs", type=int, default=3, help="epochs a run (the quickstart has 10)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more overrides for both commits (tests/test_bench.py: a smaller drawn set)")
    args = parser.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="step-regression-") as tmp:
        tmp_path = Path(tmp)
        base = tmp_path / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), args.base], cwd=REPO, check=True,
                       capture_output=True)
        try:
            extra = {}
            missing = missing_pins(base)
            if missing:
                # What pip would add to this environment for them (their own missing dependencies too),
                # installed aside: nothing this environment has is shadowed.
                resolved = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "--report", "-",
                                         *missing], check=True, capture_output=True, text=True).stdout
                needed = [f"{i['metadata']['name']}=={i['metadata']['version']}"
                          for i in json.loads(resolved)["install"]]
                site = tmp_path / "base-site"
                subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                                *needed], check=True, capture_output=True)
                extra[args.base] = str(site)
                print(f"{args.base} needs {', '.join(needed)}: installed for it alone", flush=True)
            checkouts = {args.base: base, f"now ({head})": REPO}
            for name, checkout in checkouts.items():  # drawing, audit and caches, not timed
                run(checkout, tmp_path / f"warm-{name[:3]}", args.epochs, tmp_path / f"cache-{name[:3]}", args.set,
                    extra.get(name, ""))
            rows = []
            for i in range(args.repeats):
                for name, checkout in checkouts.items():
                    row = run(checkout, tmp_path / f"{name[:3]}-{i}", args.epochs, tmp_path / f"cache-{name[:3]}",
                              args.set, extra.get(name, ""))
                    rows.append({"commit": name, "repeat": i, **row})
                    print(f"{name:<16} run {i}: train_runtime {row['train_runtime']:6.1f} s  wall {row['wall']:6.1f} s"
                          f"  test accuracy {row['test_accuracy']:.4f}", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    names = list(checkouts)
    report(rows, names, args)
    return 0


def report(rows: list, names: list, args: argparse.Namespace) -> None:
    print(f"\n{args.epochs} epochs of the quickstart, {os.cpu_count()} cores; ratio now / {args.base}, by pair:")
    for key in ("train_runtime", "wall"):
        pairs = [now[key] / old[key] for old, now in zip(rows[0::2], rows[1::2])]
        print(f"  {key:<14} median {statistics.median(pairs):.3f}  range {min(pairs):.3f}-{max(pairs):.3f}  "
              f"({names[0]}: median {statistics.median(r[key] for r in rows[0::2]):.1f} s; now: "
              f"{statistics.median(r[key] for r in rows[1::2]):.1f} s)")


if __name__ == "__main__":
    sys.exit(main())
