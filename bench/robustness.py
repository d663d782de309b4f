"""Does training help robustness? The quickstart recipe against itself with the drawn set's
occluders and with corruption-style augmentation, at the same budget, on drawn and real photos.

    .venv/bin/python bench/robustness.py --seeds 0 1 2
    .venv/bin/python bench/robustness.py --seeds 0 --arms default --max-images 50   # the code path

Arms (overrides of configs/quickstart.yaml): default; occluders (data.synthetic_occluders=0.3: a
hand, scarf or phone over the mouth of 30% of the drawn faces without a mask, still labelled so);
corruption (recipe.corruption_augment=0.5: blur, motion blur, noise, JPEG and darkening as
augmentation). Each arm trains once per seed on that seed's drawn set; `evaluate.py RUN
--robustness` then tests every run on the same images: a drawn set of seed 1000 (800 images) and
the real photos of FM12K dev's validation/ folder, a seeded sample of --max-images of each. Printed per arm and set:
clean accuracy, mean corruption accuracy, the relative drop per corruption (1 - corrupted /
clean), and the occlusion flip rate; mean +- standard error (range) over the seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import spread, trained_results, write_json  # noqa: E402

ARMS = {"default": [], "occluders": ["data.synthetic_occluders=0.3"], "corruption": ["recipe.corruption_augment=0.5"]}
FM12K = REPO.parent / "shared" / "data" / "fm12k-dev" / "validation"
# Every arm is tested on the same images: a drawn set of a seed no arm trains on (the occluders
# arm draws its own training set differently, so its own test split would be other images), and
# the real photos.
DRAWN = ["--data", "synthetic", "--num-images", "800", "--image-size", "48", "--seed", "1000"]
# What recipe.corruption_augment trains on (Gaussian and motion blur, noise, JPEG, gamma): the
# table's other corruptions (contrast, pixelate; defocus is a blur) are held out, as ImageNet-C's are.
HELD_OUT = ("contrast", "pixelate")


def robustness_record(run: Path, name: str, data: List[str], max_images: int) -> Dict[str, Any]:
    out = run / f"{name}-eval"
    record = out / f"{name}_robustness.json"
    if not record.is_file():
        subprocess.run([sys.executable, "evaluate.py", str(run), *data, "--split", name, "--output-dir", str(out),
                        "--robustness", "--robustness-max-images", str(max_images), "--error-maps", "none",
                        "--overwrite"], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(record.read_text())


def figures(record: Dict[str, Any]) -> Dict[str, float]:
    clean = record["clean_accuracy"]
    row = {"clean accuracy": clean, "mean corruption accuracy": record["mean_corruption_accuracy"]}
    for name, mean in record["corruption_means"].items():
        row[f"drop: {name}{' (held out)' if name in HELD_OUT else ''}"] = 1 - mean / clean
    if record["occlusion"].get("flip_rate") is not None:
        row["occlusion flip rate"] = record["occlusion"]["flip_rate"]
        for kind, k in record["occlusion"]["by_occluder"].items():
            row[f"  flipped by a {kind}"] = k["flip_rate"]
    return row


def main(argv: List[str] | None = None) -> None:
    from facemask.training.repeat import summarise

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--max-images", type=int, default=500)
    parser.add_argument("--work", default="/tmp/facemask-bench-robustness")
    parser.add_argument("--fm12k", default=str(FM12K), help="real photos, a folder per class")
    parser.add_argument("--output", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    table: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
    for arm in args.arms:
        for seed in args.seeds:
            run = Path(args.work) / f"{arm}-seed{seed}"
            trained_results("configs/quickstart.yaml", [f"training.seed={seed}", *ARMS[arm]], run)
            records = {"drawn (seed 1000)": robustness_record(run, "drawn", DRAWN, args.max_images),
                       "FM12K validation": robustness_record(run, "fm12k", ["--data", args.fm12k], args.max_images)}
            for name, record in records.items():
                for key, value in figures(record).items():
                    table.setdefault(name, {}).setdefault(key, {}).setdefault(arm, []).append(value)
            print(f"{arm} seed {seed}: " + "; ".join(
                f"{name} clean {r['clean_accuracy']:.4f}, corrupted {r['mean_corruption_accuracy']:.4f}, occlusion "
                f"{r['occlusion'].get('flip_rate') or 0:.3f}" for name, r in records.items()), flush=True)
    for name, rows in table.items():
        print(f"\n{name}: mean +- standard error (range) over seeds {args.seeds}")
        print(f"{'':28}" + "".join(f"{arm:>34}" for arm in args.arms))
        for key, arms in rows.items():
            print(f"{key:28}" + "".join(f"{spread(summarise([{'v': v} for v in arms[arm]])['v']):>34}"
                                         if arm in arms else f"{'':>34}" for arm in args.arms))
    if args.output:
        write_json(args.output, {"seeds": args.seeds, "max_images": args.max_images, "table": table})


if __name__ == "__main__":
    main()
