"""Does masked-image pretraining on unlabelled images make a better face-mask classifier from few labels?

    .venv/bin/python bench/pretrain.py                  # 500 and 2000 labels, seeds 42 0 1 (~25 min on 2 cores)
    .venv/bin/python bench/pretrain.py --tiny           # the code path (the slow test): ~2 minutes

1. Pretraining: `python -m facemask pretrain configs/pretrain-quickstart.yaml` on --pretrain-images
   drawn faces of both styles (data.synthetic_style=mixed, seed 7: other images than the
   fine-tuning's), for --pretrain-epochs; its CPU and wall time.
2. A street test folder: --street-images drawn in the street style (seed 99), which the
   fine-tuning (studio faces) never trains on: data.extra_test.street in every run.
3. Per label count L: `repeat configs/quickstart.yaml --seeds ... data.max_train_samples=L` from
   random weights (scratch) and from the pretrained encoder (model.name_or_path), the same
   fine-tuning otherwise (epochs, schedule, learning rate): test (studio) and street accuracy,
   mean +- standard error (range), the gain paired by seed, and `compare` of every seed's pair on
   the test split and on the street set (bootstrap 95% interval, McNemar exact p).
   `--finetune-set KEY=VALUE ...` adds overrides to the pretrained arm only (a variant to try; the
   table says which were used).

Every step resumes: the folders are kept under --work, a finished step (its times in steps.json)
is not run again, and repeat resumes its own runs. Nothing is tuned on the test results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import run_accuracy, spread, timed  # noqa: E402
from facemask.run_folder import PRETRAINING, REPEAT_RESULTS_JSON  # noqa: E402

PRETRAIN_CONFIG = "configs/pretrain-quickstart.yaml"
CONFIG = "configs/quickstart.yaml"
TINY = ["training.num_train_epochs=1"]


def street_folder(folder: Path, images: int) -> Path:
    """The street-style test folder, written once (to a temporary name, so a crash leaves none)."""
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        subprocess.run([sys.executable, "-m", "facemask", "synth", str(partial), "--num-images", str(images),
                        "--image-size", "48", "--seed", "99", "--style", "street"], cwd=REPO, check=True,
                       capture_output=True)
        partial.rename(folder)
    return folder


def compared(a: Path, b: Path, split: str, out: Path) -> Dict[str, Any]:
    if not out.is_file():
        subprocess.run([sys.executable, "-m", "facemask", "compare", str(a), str(b), "--split", split,
                        "--output", str(out)], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.read_text())


def labels(args: argparse.Namespace, count: int, encoder: Path, street: Path) -> Dict[str, Any]:
    folder = Path(args.work) / f"labels-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    seeds = [str(s) for s in args.seeds]
    common = [f"data.max_train_samples={count}", f"data.extra_test.street={street.resolve()}", "hub.push=false",
              *args.set]
    arms = {"scratch": [], "pretrained": [f"model.name_or_path={encoder.resolve()}", *args.finetune_set]}
    result: Dict[str, Any] = {"labels": count, "cost": {}}
    print(f"\n{count} labelled training images", flush=True)
    for arm, extra in arms.items():
        out = folder / arm
        result["cost"][arm] = timed(arm, [sys.executable, "-m", "facemask", "repeat", CONFIG, "--seeds", *seeds,
                                          *common, *extra, f"training.output_dir={out.resolve()}"], folder,
                                    (out / REPEAT_RESULTS_JSON).is_file())
        runs = [out / f"seed-{s}" for s in seeds]
        result[arm] = {"test": [run_accuracy(r, "test") for r in runs], "street": [run_accuracy(r, "street") for r in runs],
                       "summary": json.loads((out / REPEAT_RESULTS_JSON).read_text())["summary"]}
    info = json.loads((folder / "scratch" / f"seed-{seeds[0]}" / "run_info.json").read_text())
    result["test_images"] = info["data"]["splits"]["test"]["num_images"]
    result["compare"] = {split: [compared(folder / "scratch" / f"seed-{s}", folder / "pretrained" / f"seed-{s}", split,
                                          folder / f"compare-{split}-seed-{s}.json") for s in seeds]
                         for split in ("test", "street")}
    return result


def report(args: argparse.Namespace, pretraining: Dict[str, Any], cost: Dict[str, float],
           results: List[Dict[str, Any]]) -> None:
    variant = " ".join(args.finetune_set) or "none"
    print(f"\nMasked-image pretraining (SimMIM, {PRETRAIN_CONFIG}) on {args.pretrain_images} unlabelled drawn faces "
          f"(studio and street, seed 7), {args.pretrain_epochs} epochs: {cost['cpu_s']:.0f} s CPU, {cost['wall_s']:.0f} s "
          f"wall (of which training {pretraining.get('train_seconds', 0):.0f} s); final masked-pixel L1 "
          f"{pretraining.get('train_loss', float('nan')):.4f} (held out {pretraining.get('eval_loss') or float('nan'):.4f}). "
          f"Fine-tuning: {CONFIG} with data.max_train_samples, seeds {' '.join(map(str, args.seeds))}, the same recipe "
          f"for both arms (pretrained arm's extra overrides: {variant}); test = {results[0]['test_images']} studio images "
          f"per seed, street = "
          f"{args.street_images} street-style images (seed 99); {platform.machine()}, {os.cpu_count()} cores")
    print("\n| labels | set | from scratch | pretrained | pretrained - scratch, paired by seed (range) "
          "| compare per seed: B - A [95% interval], McNemar p |")
    print("|---:|---|---:|---:|---:|---|")
    for r in results:
        for split in ("test", "street"):
            gaps = [p - s for s, p in zip(r["scratch"][split], r["pretrained"][split])]
            pairs = "; ".join(f"{c['difference']['b_minus_a']:+.4f} [{c['difference']['low']:+.4f}, "
                              f"{c['difference']['high']:+.4f}] p={c['mcnemar']['p_value']:.2g}"
                              for c in r["compare"][split])
            print(f"| {r['labels']} | {split} | {spread(r['scratch']['summary'][f'{split}_accuracy'])} "
                  f"| {spread(r['pretrained']['summary'][f'{split}_accuracy'])} | {statistics.fmean(gaps):+.4f} "
                  f"({min(gaps):+.4f} to {max(gaps):+.4f}) | {pairs} |")
    print("\nCost: CPU = user + system seconds of the child processes; one fine-tuning run = its arm's repeat / "
          f"{len(args.seeds)}")
    print("\n| labels | one run from scratch, CPU s | one run pretrained, CPU s | pretraining, CPU s |")
    print("|---:|---:|---:|---:|")
    for r in results:
        n = len(args.seeds)
        print(f"| {r['labels']} | {r['cost']['scratch']['cpu_s'] / n:.0f} | {r['cost']['pretrained']['cpu_s'] / n:.0f} "
              f"| {cost['cpu_s']:.0f} |")


def main(argv: List[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[500, 2000], help="labelled training images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1], help="repeat's seeds, per arm")
    parser.add_argument("--pretrain-images", type=int, default=20000)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--street-images", type=int, default=1000)
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "pretrain-runs"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every fine-tuning")
    parser.add_argument("--finetune-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for the pretrained arm's fine-tuning only")
    parser.add_argument("--tiny", action="store_true", help="the code path: 1000 + 200 images, 1 seed, 1 epoch")
    args = parser.parse_args(argv)
    pretrain_set = []
    if args.tiny:
        args.labels, args.seeds, args.pretrain_images, args.pretrain_epochs = [200], args.seeds[:1], 1000, 1
        args.street_images = 200
        args.set = [*TINY, "data.synthetic_num_images=1000", *args.set]
        pretrain_set = ["training.eval_strategy=no", "training.save_strategy=no"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    encoder = work / "pretrain"
    cost = timed("pretrain", [sys.executable, "-m", "facemask", "pretrain", PRETRAIN_CONFIG,
                              f"data.synthetic_num_images={args.pretrain_images}",
                              f"training.num_train_epochs={args.pretrain_epochs}", *pretrain_set,
                              f"training.output_dir={encoder.resolve()}"], work, PRETRAINING.path(encoder).is_file())
    pretraining = json.loads(PRETRAINING.path(encoder).read_text())
    street = street_folder(work / "street", args.street_images)
    results = [labels(args, count, encoder, street) for count in args.labels]
    report(args, pretraining, cost, results)
    summary = {"pretraining": pretraining, "pretraining_cost": cost, "finetune_set": args.finetune_set,
               "results": results}
    (work / "pretrain.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
