"""Do the explanation maps mean something, and what do they cost? (facemask/evaluation/explain.py)

    .venv/bin/python bench/explain.py --seeds 42 0 1                  # quickstart ViT and BEiT, 3 seeds each
    .venv/bin/python bench/explain.py --seeds 0 --archs vit --images 8 --tiny   # the code path (the test)

Per architecture and seed, the quickstart config is trained once (kept under --runs; a finished
run is reused), then both methods are run on --images drawn images the run never saw (another
seed of the generator, half with a mask):

1. Model randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps"): each
   image's map from the trained model against the map of the same architecture with fresh random
   weights, for the same class (the trained model's prediction). Spearman's rank correlation over
   the patches; near 0 means the map depends on what the model learned.
2. Localisation: on the with_mask images the trained model gets right, the share of the map's
   positive attribution inside the drawn mask (and inside the drawn face) beside that region's
   share of the image. A map no better than chance puts the region's share inside it.
3. Cost: seconds per image of each method, for the quickstart model (48 px, 6x6 patches) and for
   ViT-B/16 at 224 px (random init: cost does not depend on the weights), and what the error
   gallery's maps (16 images, the gallery's size) add to the evaluation of the run's test split.

Figures are means over the seeds with their range; nothing is tuned on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from facemask.evaluation.analysis import GALLERY_SIZE as GALLERY  # noqa: E402
from facemask.run_folder import CARD, RESULTS  # noqa: E402

CONFIGS = {"vit": "configs/quickstart.yaml", "beit": "configs/quickstart-beit.yaml"}


def train(arch: str, seed: int, runs: Path, tiny: bool) -> Path:
    folder = runs / f"{arch}-seed{seed}"
    if CARD.path(folder).is_file():
        return folder
    extra = ["data.synthetic_num_images=200", "training.num_train_epochs=1"] if tiny else []
    done = subprocess.run([sys.executable, str(REPO / "train.py"), str(REPO / CONFIGS[arch]), f"training.seed={seed}",
                           f"training.output_dir={folder}", "hub.push=false", *extra, "--overwrite"],
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"training {folder.name} failed:\n{done.stderr[-3000:]}")
    return folder


def held_out(count: int, seed: int, side: int) -> tuple:
    from facemask.data.synthetic import sample

    images, labels, regions = [], [], []
    for index in range(count):
        drawn: Dict = {}
        image, label = sample(10_000 + seed, index, side, regions=drawn)
        images.append(image)
        labels.append(label)
        regions.append(drawn)
    return images, labels, regions


def evidence(folder: Path, seed: int, count: int) -> Dict[str, Dict[str, float]]:
    import numpy as np

    from facemask.evaluation.explain import METHODS, explain_images, rank_correlations, reinitialised, share_inside
    from facemask.evaluation.loading import load_model

    model, processor = load_model(str(folder))
    side = model.config.image_size
    images, labels, regions = held_out(count, seed, side)
    random_model = reinitialised(model, seed)
    out = {}
    for method in METHODS:
        maps = explain_images(model, processor, images, method=method)
        targets = [m.target for m in maps]
        random_maps = explain_images(random_model, processor, images, targets, method=method)
        rho = rank_correlations(maps, random_maps)
        row = {"rank_correlation": float(np.nanmean(rho)), "images": len(images)}
        right = [k for k, m in enumerate(maps) if labels[k] == 0 and m.target == 0]
        for region in ("mask", "face"):
            shares = [share_inside(maps[k].grid, regions[k][region]) for k in right]
            kept = [(s, float(regions[k][region].mean())) for s, k in zip(shares, right) if s is not None]
            row[f"{region}_share"] = statistics.fmean(s for s, _ in kept) if kept else float("nan")
            row[f"{region}_area"] = statistics.fmean(a for _, a in kept) if kept else float("nan")
        row["correct_with_mask"] = len(right)
        out[method] = row
    return out


def seconds_per_image(model, processor, images, method: str, repeats: int) -> float:
    from facemask.evaluation.explain import explain_images

    explain_images(model, processor, images[:1], method=method)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explain_images(model, processor, images, method=method)
        times.append((time.perf_counter() - start) / len(images))
    return statistics.median(times)


def cost(folder: Path, tiny: bool, repeats: int) -> Dict[str, Dict[str, float]]:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    from facemask.evaluation.explain import METHODS
    from facemask.evaluation.loading import load_model

    torch.set_num_threads(torch.get_num_threads())
    model, processor = load_model(str(folder))
    images, _, _ = held_out(8, 0, model.config.image_size)
    out = {"quickstart": {m: seconds_per_image(model, processor, images, m, repeats) for m in METHODS}}
    extra = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64} if tiny else {}
    base = ViTForImageClassification(ViTConfig(num_labels=2, **extra)).eval()
    base_processor = ViTImageProcessorPil(size={"height": 224, "width": 224})
    big, _, _ = held_out(2 if tiny else 4, 0, 224)
    out["vit-base-224"] = {m: seconds_per_image(base, base_processor, big, m, 1 if tiny else repeats) for m in METHODS}
    test = json.loads(RESULTS.path(folder, "test").read_text())
    out["gallery"] = {"test_runtime_s": test["test_runtime"],
                      "maps_16_images_s": out["quickstart"]["ablation"] * GALLERY,
                      "vit_base_maps_16_images_s": out["vit-base-224"]["ablation"] * GALLERY}
    return out


def main(argv: List[str] | None = None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    parser.add_argument("--archs", nargs="+", choices=sorted(CONFIGS), default=["vit", "beit"])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "explain-runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="small runs and a small 'ViT-B': the code path only")
    args = parser.parse_args(argv)
    report: Dict = {"evidence": {}, "cost": {}}
    for arch in args.archs:
        per_seed = {seed: evidence(train(arch, seed, args.runs, args.tiny), seed, args.images) for seed in args.seeds}
        report["evidence"][arch] = per_seed
        print(f"\n{arch} quickstart, seeds {' '.join(map(str, args.seeds))}, {args.images} held-out drawn images each "
              "(mean over seeds, range)")
        print("| method | rank corr. trained vs random | mask share / mask area | face share / face area | "
              "images (with_mask, right) |")
        print("|---|---:|---:|---:|---:|")
        for method in next(iter(per_seed.values())):
            rows = [per_seed[s][method] for s in args.seeds]

            def cell(key: str, digits: int = 3) -> str:
                values = [r[key] for r in rows]
                return (f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"
                        if len(values) > 1 else f"{values[0]:.{digits}f}")

            print(f"| {method} | {cell('rank_correlation')} | {cell('mask_share')} / {cell('mask_area')} | "
                  f"{cell('face_share')} / {cell('face_area')} | {cell('correct_with_mask', 0)} |")
    folder = train(args.archs[0], args.seeds[0], args.runs, args.tiny)
    report["cost"] = cost(folder, args.tiny, args.repeats)
    print(f"\ncost, seconds per image (median of {args.repeats}; batch of 8 for the quickstart, 4 for ViT-B/16)")
    print("| model | " + " | ".join(report["cost"]["quickstart"]) + " |")
    print("|---|" + "---:|" * len(report["cost"]["quickstart"]))
    for name in ("quickstart", "vit-base-224"):
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in report["cost"][name].values()) + " |")
    gallery = report["cost"]["gallery"]
    print(f"\nerror gallery: maps of {GALLERY} images add {gallery['maps_16_images_s']:.2f} s to an evaluation of the "
          f"test split that took {gallery['test_runtime_s']:.2f} s ({args.archs[0]}, seed {args.seeds[0]}); for "
          f"ViT-B/16 at 224 px (ablation) they would add {gallery['vit_base_maps_16_images_s']:.1f} s")
    return report


if __name__ == "__main__":
    main()
