"""Does `python -m facemask label-issues` find wrong labels, does leaving them out help, and what does it cost?

    .venv/bin/python bench/label_issues.py                 # 0%, 5% and 15% noise, 5 folds, seeds 0 1 2
    .venv/bin/python bench/label_issues.py --tiny --noise 0.15   # the code path (the slow test): ~2 minutes
    # real photos: FM12K's development train/ with 10% of its labels moved, flags only (no accuracy arms)
    .venv/bin/python bench/label_issues.py --real ../shared/data/fm12k-dev/train --noise 0.1 --folds 3 \
        --recovery-only --set training.num_train_epochs=5 --work /tmp/label-issues-fm12k

Data: the drawn set (facemask/data/synthetic.py) written as an image folder, --images of seed 0 for
training and --test-images of seed 1 as a test folder of its own (data.test_dir), so the test
labels are never noisy. Per noise level, a copy of the training folder with that share of its
files moved into the other class's folder, drawn at random (seeded by the level: flips.json
records which; 0% shows what it flags among right labels). Per level, with configs/quickstart.yaml
and data.train_dir / data.test_dir:

1. Noise recovery: `label-issues --folds K`; precision and recall of its `is_issue` column against
   the moved files, the number flagged, and the noise it estimates (label_issues.json: 1 - the
   trace of cleanlab's joint) beside the true share.
2. Accuracy: `repeat --seeds ...` trained on the noisy labels, and again with
   `data.exclude=<label-issues' exclude.txt>`, each arm its own folder: clean-test accuracy,
   mean +- standard error (range), the difference paired by seed; and `compare` of the first
   seed's pair (same test folder, so compare pairs the images).
3. Cost: CPU time (the children's, resource.getrusage(RUSAGE_CHILDREN) around each command) and
   wall time of the label-issues run against one training run (the noisy arm's repeat over its
   seeds, per run). On a shared machine wall time stretches with the other load; CPU time is the
   fair figure.

Every step resumes: the folders are kept under --work, a finished step (its times in
steps.json) is not run again, and label-issues and repeat resume their own runs. Nothing is tuned
on the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import run_accuracy, spread, timed  # noqa: E402
from facemask.run_folder import EXCLUDE_LIST, LABEL_ISSUES_CSV, LABEL_ISSUES_JSON, REPEAT_RESULTS_JSON  # noqa: E402

CONFIG = "configs/quickstart.yaml"
TINY = ["training.num_train_epochs=1", "data.validation_split=0.2"]


def draw(folder: Path, images: int, seed: int) -> Path:
    """The drawn set as an image folder, written once (to a temporary name, so a crash leaves none)."""
    from facemask.data.synthetic import write_image_folder

    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        write_image_folder(partial, images, 48, seed)
        partial.rename(folder)
    return folder


def flip(clean: Path, folder: Path, rate: float, seed: int | None = None) -> List[str]:
    """A copy of `clean` with round(rate * files) of its files moved into the other class's folder;
    the moved files' new paths, relative to `folder` (label-issues' `file` column). The draw is
    seeded by the rate (and by `seed`, where given); a folder of symbolic links is copied as links."""
    record = folder.parent / "flips.json"
    if record.is_file() and folder.is_dir():
        return json.loads(record.read_text())["moved"]
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(clean, folder, symlinks=True)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if len(classes) != 2:
        raise SystemExit(f"{clean} holds {classes}: flipping needs two classes")
    files = sorted(str(p.relative_to(folder)) for p in folder.glob("*/*"))
    key = f"label-issues-bench:{rate}" + ("" if seed is None else f":{seed}")
    chosen = random.Random(key).sample(files, round(rate * len(files)))
    moved = []
    for name in sorted(chosen):
        old = Path(name)
        new = Path(classes[1 - classes.index(old.parent.name)]) / old.name
        (folder / old).rename(folder / new)
        moved.append(str(new))
    record.write_text(json.dumps({"rate": rate, "files": len(files), "moved": moved}, indent=1))
    return moved


def recovery(out: Path, moved: List[str]) -> Dict[str, Any]:
    with (out / LABEL_ISSUES_CSV).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    listed = {r["file"] for r in rows}
    flagged = {r["file"] for r in rows if r["is_issue"].strip().lower() in ("true", "1")}
    wrong = set(moved) & listed
    hit = len(flagged & wrong)
    info = json.loads((out / LABEL_ISSUES_JSON).read_text())
    joint = info["joint"]["matrix"]
    return {"images": len(rows), "flipped": len(wrong), "flipped_not_listed": len(set(moved) - listed),
            "flagged": len(flagged), "hits": hit, "precision": hit / len(flagged) if flagged else None,
            "recall": hit / len(wrong) if wrong else None, "true_noise": len(wrong) / len(rows),
            "estimated_noise": 1 - sum(joint[i][i] for i in range(len(joint))),
            "fold_accuracy": list(info["fold_accuracy"].values())}


def level(args: argparse.Namespace, rate: float, clean: Path, test: Path | None,
          overrides: List[str]) -> Dict[str, Any]:
    folder = Path(args.work) / f"noise-{round(100 * rate):02d}"
    folder.mkdir(parents=True, exist_ok=True)
    train = folder / "train"
    moved = flip(clean, train, rate)
    print(f"\n{rate:.0%} noise: {len(moved)} of the training folder's files moved into the other class", flush=True)
    # Real photos come without a test folder of their own: the test split is carved (unused for recovery).
    test_dir = [f"data.test_dir={test.resolve()}"] if test is not None else []
    data = ["data.synthetic=false", f"data.train_dir={train.resolve()}", *test_dir, "hub.push=false", *overrides]
    found = folder / "label-issues"
    cost = {"label-issues": timed("label-issues", [sys.executable, "-m", "facemask", "label-issues", CONFIG,
                                                   "--folds", str(args.folds), *data,
                                                   f"training.output_dir={found.resolve()}"],
                                  folder, (found / LABEL_ISSUES_JSON).is_file())}
    summary = (folder / "label-issues.log").read_text().split("\nlabel-issues: ", 1)
    if len(summary) == 2:  # its console summary, without the folds' training logs
        print("\n".join("    " + line for line in ("label-issues: " + summary[1]).splitlines()[:12]))
    result = {"rate": rate, **recovery(found, moved)}
    if args.recovery_only:
        return result
    seeds = [str(s) for s in args.seeds]
    arms = {"noisy": [], "cleaned": [f"data.exclude={(found / EXCLUDE_LIST).resolve()}"]}
    for arm, extra in arms.items():
        out = folder / arm
        cost[arm] = timed(arm, [sys.executable, "-m", "facemask", "repeat", CONFIG, "--seeds", *seeds, *data, *extra,
                                f"training.output_dir={out.resolve()}"], folder, (out / REPEAT_RESULTS_JSON).is_file())
        summary = json.loads((out / REPEAT_RESULTS_JSON).read_text())
        result[arm] = {"accuracy": [run_accuracy(out / f"seed-{s}") for s in args.seeds],
                       "summary": summary["summary"]["test_accuracy"]}
    pair = folder / "compare.json"
    a, b = folder / "noisy" / f"seed-{seeds[0]}", folder / "cleaned" / f"seed-{seeds[0]}"
    shown = subprocess.run([sys.executable, "-m", "facemask", "compare", str(a), str(b), "--output", str(pair)],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout
    print(f"  python -m facemask compare {a.relative_to(args.work)} {b.relative_to(args.work)}:\n"
          + "\n".join("    " + line for line in shown.splitlines()))
    result["compare"] = json.loads(pair.read_text())
    result["cost"] = cost
    return result


def report(args: argparse.Namespace, results: List[Dict[str, Any]]) -> None:
    n = len(args.seeds)
    overrides = " " + " ".join(args.set) if args.set else ""
    data = (f"real photos of {Path(args.real).resolve().parent.name}/{Path(args.real).name} as the training folder"
            if args.real else f"the drawn set as image folders: {args.images} training images (seed 0; validation "
                              f"carved from them), {args.test_images} clean test images (seed 1)")
    print(f"\nlabel-issues on {data}, {CONFIG}{overrides}, {args.folds} folds; {platform.machine()}, "
          f"{os.cpu_count()} cores")
    print("\n| noise (true) | training images | flipped | flagged | precision | recall | estimated noise "
          "| fold accuracy (min-max) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        fmt = (lambda v: "n/a" if v is None else f"{v:.3f}")
        print(f"| {r['true_noise']:.2%} | {r['images']} | {r['flipped']} | {r['flagged']} | {fmt(r['precision'])} "
              f"| {fmt(r['recall'])} | {r['estimated_noise']:.2%} | {min(r['fold_accuracy']):.4f}-"
              f"{max(r['fold_accuracy']):.4f} |")
    if args.recovery_only:
        return
    print(f"\nClean-test accuracy, seeds {' '.join(map(str, args.seeds))}: mean ± standard error (range); "
          f"cleaned = data.exclude=label-issues' exclude.txt; compare on seed {args.seeds[0]}'s pair "
          f"(bootstrap 95% interval, McNemar exact p)")
    print("\n| noise | trained on noisy labels | after data.exclude | cleaned - noisy, paired by seed (range) "
          f"| compare seed {args.seeds[0]}: B - A (95% interval) | McNemar p |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        gaps = [c - w for w, c in zip(r["noisy"]["accuracy"], r["cleaned"]["accuracy"])]
        d, mc = r["compare"]["difference"], r["compare"]["mcnemar"]
        print(f"| {r['rate']:.0%} | {spread(r['noisy']['summary'])} | {spread(r['cleaned']['summary'])} "
              f"| {statistics.fmean(gaps):+.4f} ({min(gaps):+.4f} to {max(gaps):+.4f}) "
              f"| {d['b_minus_a']:+.4f} ({d['low']:+.4f} to {d['high']:+.4f}) | {mc['p_value']:.3g} |")
    print(f"\nCost: the label-issues run ({args.folds} folds) against one training run (the noisy arm's repeat / {n}); "
          "CPU = user + system seconds of the child processes")
    print("\n| noise | label-issues CPU s | one training run CPU s | ratio | label-issues wall s | one run wall s "
          "| ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        li, one = r["cost"]["label-issues"], {k: v / n for k, v in r["cost"]["noisy"].items()}
        print(f"| {r['rate']:.0%} | {li['cpu_s']:.0f} | {one['cpu_s']:.0f} | {li['cpu_s'] / one['cpu_s']:.2f}x "
              f"| {li['wall_s']:.0f} | {one['wall_s']:.0f} | {li['wall_s'] / one['wall_s']:.2f}x |")


def main(argv: List[str] | None = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.05, 0.15], help="shares of labels to flip")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="repeat's seeds, per arm")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--images", type=int, default=2000, help="training images (validation is carved from them)")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "label-issues-runs"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--tiny", action="store_true", help="the code path: 80 + 40 images, 2 folds, 1 seed, 1 epoch")
    parser.add_argument("--real", metavar="DIR", help="a labelled image folder of real photos (one sub-folder per "
                                                      "class) as the clean training data, instead of drawn images; "
                                                      "it is copied under --work, never changed")
    parser.add_argument("--recovery-only", action="store_true",
                        help="flags only: precision and recall against the moved files (no accuracy arms)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.images, args.test_images, args.folds, args.seeds = 80, 40, 2, args.seeds[:1]
        args.set = [*TINY, *args.set]
    if args.real and not args.recovery_only:
        parser.error("--real needs --recovery-only: the accuracy arms need a clean test folder of other images")
    work = Path(args.work)
    clean = Path(args.real) if args.real else draw(work / "clean-train", args.images, seed=0)
    test = None if args.real else draw(work / "test", args.test_images, seed=1)
    results = [level(args, rate, clean, test, args.set) for rate in args.noise]
    report(args, results)
    (work / "label_issues.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
