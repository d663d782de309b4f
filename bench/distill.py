"""Distillation (recipe.distill) with a tiny teacher and student made here: the accuracy the
student keeps, and its CPU speed against the teacher's.

    .venv/bin/python bench/distill.py --seeds 0 1 2      # after `python train.py configs/quickstart.yaml`
    .venv/bin/python bench/distill.py --seeds 0 --speed-only --repeats 1 --iters 1   # the code path

Teacher: outputs/quickstart (ViT, 4 blocks of width 64, 149k parameters, trained on drawn images
of seed 42). Student: configs/quickstart-distill.yaml's ViT (2 blocks of width 32, 25k), trained
once per seed with the teacher (alpha 0.5, T 2) and once without it (recipe.distill=null), on the
drawn set of that seed, which the teacher never saw. Each seed's teacher.json holds the teacher's
accuracy on that seed's test split; "kept" is student / teacher accuracy on the same images.
Speed: both models through bench/inference.py's runners (PyTorch eager and onnxruntime int8 from
`python -m facemask export`'s own functions), at batch 1 and 32, the backends and models taking
turns within each repeat; median (min-max) images/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench.common import interleaved_rates, median_range, paired, spread, trained_results  # noqa: E402
from facemask.run_folder import TEACHER, WEIGHTS  # noqa: E402


def _train(overrides: List[str], folder: Path) -> Dict:
    result = trained_results("configs/quickstart-distill.yaml", overrides, folder)
    teacher = TEACHER.path(folder)
    result["teacher"] = json.loads(teacher.read_text()) if teacher.is_file() else None
    return result


def accuracy(args: argparse.Namespace, teacher: Path) -> Dict[str, List[float]]:
    from facemask.training.repeat import summarise

    work = Path(args.work)
    rows: Dict[str, List[float]] = {"teacher": [], "distilled": [], "labels only": []}
    seconds: Dict[str, List[float]] = {"distilled": [], "labels only": []}
    for seed in args.seeds:
        common = [f"training.seed={seed}", f"recipe.distill.teacher={teacher}", *args.overrides]
        distilled = _train(common, work / f"distilled-seed{seed}")
        plain = _train([f"training.seed={seed}", "recipe.distill=null", *args.overrides], work / f"plain-seed{seed}")
        rows["teacher"].append(distilled["teacher"]["results"]["test"]["test_accuracy"])
        rows["distilled"].append(distilled["test_accuracy"])
        rows["labels only"].append(plain["test_accuracy"])
        seconds["distilled"].append(distilled["train_runtime"])
        seconds["labels only"].append(plain["train_runtime"])
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in rows.items()), flush=True)
    print(f"\ntest accuracy over seeds {args.seeds} (mean +- standard error, range), the same images per seed")
    for name, values in rows.items():
        note = f", training {statistics.median(seconds[name]):.0f} s median" if name in seconds else ""
        print(f"  {name:<12} {spread(summarise([{'a': v} for v in values])['a'], '+-')}{note}")
    for name in ("distilled", "labels only"):
        kept = [s / t for s, t in zip(rows[name], rows["teacher"])]
        print(f"  {name} keeps {statistics.mean(kept):.1%} of the teacher's accuracy "
              f"(range {min(kept):.1%}-{max(kept):.1%})")
    gain = [d - p for d, p in zip(rows["distilled"], rows["labels only"])]
    print(f"  distilled - labels only, paired by seed: {paired(gain)}")
    return rows


def speed(args: argparse.Namespace, models: Dict[str, Path]) -> Dict[str, Dict]:
    import torch
    from inference import runners
    from transformers import AutoModelForImageClassification

    loaded = {name: AutoModelForImageClassification.from_pretrained(path).eval() for name, path in models.items()}
    side = next(iter(loaded.values())).config.image_size
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory(prefix="facemask-distill-") as work:
        run = {}
        for name, model in loaded.items():
            (Path(work) / name).mkdir()
            backends = runners(model, side, Path(work) / name)
            run.update({f"{name} {b}": backends[b] for b in ("eager", "onnx-int8")})
        print(f"\nCPU speed at {side} px, {torch.get_num_threads()} PyTorch threads; "
              f"parameters: " + ", ".join(f"{n} {sum(p.numel() for p in m.parameters()):,}" for n, m in loaded.items()))
        for batch in (1, 32):
            pixels = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
            iters = args.iters or (50 if batch == 1 else 10)
            for fn in run.values():
                fn(pixels)
            rates = interleaved_rates({key: (lambda fn=fn: fn(pixels)) for key, fn in run.items()}, args.repeats,
                                      iters, len(pixels))
            print(f"  batch {batch} ({args.repeats} repeats of {iters} calls): images/s median (min-max)")
            for key, values in rates.items():
                print(f"    {key:<20} {median_range(values, 0, width=9)}")
            for backend in ("eager", "onnx-int8"):
                ratio = [s / t for s, t in zip(rates[f"student {backend}"], rates[f"teacher {backend}"])]
                print(f"    student / teacher, {backend}: {statistics.median(ratio):.2f}x "
                      f"({min(ratio):.2f}-{max(ratio):.2f})")
            results[f"batch {batch}"] = {k: statistics.median(v) for k, v in rates.items()}
    return results


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="outputs/quickstart")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", default="outputs/bench-distill")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=0, help="calls per timing (default: 50 at batch 1, 10 at 32)")
    parser.add_argument("--speed-only", action="store_true", help="time the teacher and the first seed's student")
    parser.add_argument("overrides", nargs="*", help="config overrides for every student run")
    args = parser.parse_args(argv)
    teacher = (REPO / args.teacher).resolve()
    if not WEIGHTS.path(teacher).is_file():
        raise SystemExit(f"{teacher} holds no model: run `python train.py configs/quickstart.yaml` first")
    print(f"teacher {teacher}; student runs of configs/quickstart-distill.yaml with {args.overrides or 'no overrides'}",
          flush=True)
    if not args.speed_only:
        accuracy(args, teacher)
    student = Path(args.work) / f"distilled-seed{args.seeds[0]}"
    if not WEIGHTS.path(student).is_file():
        _train([f"training.seed={args.seeds[0]}", f"recipe.distill.teacher={teacher}", *args.overrides], student)
    speed(args, {"teacher": teacher, "student": student})
    return 0


if __name__ == "__main__":
    sys.exit(main())
