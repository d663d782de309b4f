"""Do the explanation maps mean something, and what do they cost? (facemask/evaluation/explain.py)

    .venv/bin/python bench/explain.py --seeds 42 0 1                  # quickstart ViT and BEiT, 3 seeds each
    .venv/bin/python bench/explain.py --seeds 0 --archs vit --images 8 --tiny   # the code path (the test)
    .venv/bin/python bench/explain.py --seeds 42 --archs vit --real ../shared/data/fm12k-dev   # and real photos

Per architecture and seed, the quickstart config is trained once (kept under --runs; a finished
run is reused), then both methods are run on --images drawn images the run never saw (another
seed of the generator, half with a mask):

1. Model randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps"): each
   image's map from the trained model against the map of the same architecture with fresh random
   weights, for the same class (the trained model's prediction). Spearman's rank correlation over
   the patches, of the signed maps and of their absolute values, and the check's similarity (the
   larger of the two in absolute value, 1 for a constant map; explain.randomisation_check); near 0
   means the map depends on what the model learned.
2. Localisation: on the with_mask images the trained model gets right, the share of the map's
   positive attribution inside the drawn mask (and inside the drawn face) beside that region's
   share of the image. A map no better than chance puts the region's share inside it. The
   ablation is measured with each baseline (explain.BASELINES).
3. With --real DIR (a folder with train/ and validation/, one sub-folder per class: the FM12K
   development set), the same on real photos: the quickstart config trained once on DIR/train
   (kept under --runs as fm12k-vit), then the with_mask photos of DIR/validation it gets right.
   There is no drawn mask to compare with: the bundled face detector's five landmarks give the
   region a worn mask covers, from halfway between the eyes and the nose tip down to the bottom of
   the face's box, across the box (the whole image's geometry as the processor resizes it).
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


def checked(model, random_model, processor, images, labels, regions, method: str, baseline: str) -> Dict[str, float]:
    """The randomisation check and the localisation of one method (and baseline) on `images`;
    `regions` holds each image's boolean regions at the seen image's size, by name."""
    import numpy as np

    from facemask.evaluation.explain import explain_images, randomisation_check, share_inside

    maps = explain_images(model, processor, images, method=method, baseline=baseline)
    targets = [m.target for m in maps]
    random_maps = explain_images(random_model, processor, images, targets, method=method, baseline=baseline)
    check = randomisation_check(maps, random_maps).summary()
    row = {key: float("nan") if check[name] is None else check[name] for key, name in
           (("rank_correlation", "signed_rank_correlation"), ("absolute_rank_correlation", "absolute_rank_correlation"),
            ("similarity", "similarity"))}
    row.update(images=len(images), constant_maps=check["constant_maps"])
    right = [k for k, m in enumerate(maps) if labels[k] == 0 and m.target == 0]
    for region in regions[0] if regions else ():
        shares = [share_inside(maps[k].grid, regions[k][region]) for k in right]
        kept = [(s, float(regions[k][region].mean())) for s, k in zip(shares, right) if s is not None]
        row[f"{region}_share"] = statistics.fmean(s for s, _ in kept) if kept else float("nan")
        row[f"{region}_area"] = statistics.fmean(a for _, a in kept) if kept else float("nan")
    row["against"] = float(np.mean([(maps[k].grid < 0).mean() for k in right])) if right else float("nan")
    row["correct_with_mask"] = len(right)
    return row


def evidence(folder: Path, seed: int, count: int) -> tuple:
    """Per method (the ablation with the default baseline), and per other ablation baseline."""
    from facemask.evaluation.explain import BASELINES, DEFAULT_BASELINE, METHODS, reinitialised
    from facemask.evaluation.loading import load_model

    model, processor = load_model(str(folder))
    side = model.config.image_size
    images, labels, regions = held_out(count, seed, side)
    random_model = reinitialised(model, seed)
    methods = {m: checked(model, random_model, processor, images, labels, regions, m, DEFAULT_BASELINE)
               for m in METHODS}
    baselines = {b: checked(model, random_model, processor, images, labels, regions, "ablation", b)
                 for b in BASELINES if b != DEFAULT_BASELINE}
    return methods, baselines


def nose_and_mouth(image, detector, seen_size: tuple):
    """Where a worn mask sits in `image`, from the largest face's box and five landmarks (eyes,
    nose tip, mouth corners): from halfway between the eyes' line and the nose tip down to the
    box's bottom, across the box; as booleans at `seen_size` (width, height), the processor's
    resize of the whole image. None where no face is found (small crops enlarged for the detector)."""
    import numpy as np
    from PIL import Image

    scale = max(1.0, 160 / min(image.size))
    view = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    boxes, _, points = detector.detect_landmarks(np.asarray(view))
    if not len(boxes):
        return None
    largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    box, marks = boxes[largest] / scale, points[largest] / scale
    top = (marks[:2, 1].mean() + marks[2, 1]) / 2
    region = np.zeros((image.height, image.width), dtype=bool)
    region[int(round(top)):int(round(box[3])), int(round(box[0])):int(round(box[2]))] = True
    return np.asarray(Image.fromarray(region).resize(seen_size, Image.NEAREST))


def real_evidence(root: Path, runs: Path, count: int, seed: int) -> Dict[str, Dict[str, float]]:
    """The localisation and randomisation checks per baseline (and Grad-CAM) on the first `count`
    with_mask photos of root/validation, by the quickstart config trained on root/train."""
    from facemask.detection.detectors import load_detector
    from facemask.evaluation.explain import BASELINES, reinitialised
    from facemask.evaluation.loading import load_model
    from facemask.runtime.files import collect_paths, read_input

    folder = runs / "fm12k-vit"
    if not CARD.path(folder).is_file():
        done = subprocess.run([sys.executable, str(REPO / "train.py"), str(REPO / CONFIGS["vit"]),
                               f"training.seed={seed}", "data.synthetic=false", f"data.train_dir={root / 'train'}",
                               f"training.output_dir={folder}", "hub.push=false", "--overwrite"],
                              capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"training {folder.name} failed:\n{done.stderr[-3000:]}")
    model, processor = load_model(str(folder))
    detector = load_detector()
    side = model.config.image_size
    paths, _ = collect_paths([str(root / "validation" / "with_mask")])
    images, regions, without_face = [], [], 0
    for path in paths[:count]:
        image, _ = read_input(path)
        region = nose_and_mouth(image, detector, (side, side)) if image is not None else None
        if region is None:
            without_face += 1
            continue
        images.append(image)
        regions.append({"nose_mouth": region})
    labels = [0] * len(images)
    random_model = reinitialised(model, seed)
    out = {f"ablation ({b})": checked(model, random_model, processor, images, labels, regions, "ablation", b)
           for b in BASELINES}
    out["gradcam"] = checked(model, random_model, processor, images, labels, regions, "gradcam", BASELINES[0])
    for row in out.values():
        row.update(photos=min(count, len(paths)), without_face=without_face, run=str(folder))
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
    parser.add_argument("--archs", nargs="*", choices=sorted(CONFIGS), default=["vit", "beit"])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=Path, default=REPO / "bench" / "results" / "explain-runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="small runs and a small 'ViT-B': the code path only")
    parser.add_argument("--real", type=Path, metavar="DIR",
                        help="also real photos: DIR/train to train on, DIR/validation/with_mask to explain")
    parser.add_argument("--real-images", type=int, default=400, help="with_mask photos of DIR/validation to explain")
    parser.add_argument("--no-cost", action="store_true", help="leave out the timings (for a busy machine)")
    args = parser.parse_args(argv)
    report: Dict = {"evidence": {}, "baselines": {}, "cost": {}}
    if args.real:
        report["real"] = real_evidence(args.real, args.runs, args.real_images, args.seeds[0])
        first = next(iter(report["real"].values()))
        print(f"\nreal photos: the quickstart ViT trained on {args.real / 'train'} (seed {args.seeds[0]}), the first "
              f"{first['photos']} with_mask photos of {args.real / 'validation'} ({first['without_face']} without a "
              "face the detector finds)")
        print("| method | share inside nose and mouth / its area | patches against the class | similarity to the "
              "randomised model's maps (signed, absolute rank corr.) | photos (with_mask, right) |")
        print("|---|---:|---:|---:|---:|")
        for name, row in report["real"].items():
            print(f"| {name} | {row['nose_mouth_share']:.3f} / {row['nose_mouth_area']:.3f} | {row['against']:.2f} | "
                  f"{row['similarity']:.3f} ({row['rank_correlation']:.3f}, {row['absolute_rank_correlation']:.3f}) | "
                  f"{row['correct_with_mask']} |")
    for arch in args.archs:
        per_seed, per_baseline = {}, {}
        for seed in args.seeds:
            per_seed[seed], per_baseline[seed] = evidence(train(arch, seed, args.runs, args.tiny), seed, args.images)
        report["evidence"][arch] = per_seed
        report["baselines"][arch] = per_baseline
        print(f"\n{arch} quickstart, seeds {' '.join(map(str, args.seeds))}, {args.images} held-out drawn images each "
              "(mean over seeds, range)")
        print("| method | similarity to random (signed, absolute rank corr.) | mask share / mask area | "
              "face share / face area | images (with_mask, right) |")
        print("|---|---:|---:|---:|---:|")
        named = {f"{m} (mean)" if m == "ablation" else m: [per_seed[s][m] for s in args.seeds]
                 for m in next(iter(per_seed.values()))}
        named.update({f"ablation ({b})": [per_baseline[s][b] for s in args.seeds]
                      for b in next(iter(per_baseline.values()))})
        for method, rows in named.items():

            def cell(key: str, digits: int = 3) -> str:
                values = [r[key] for r in rows]
                return (f"{statistics.fmean(values):.{digits}f} ({min(values):.{digits}f} to {max(values):.{digits}f})"
                        if len(values) > 1 else f"{values[0]:.{digits}f}")

            print(f"| {method} | {cell('similarity')} ({cell('rank_correlation')}, "
                  f"{cell('absolute_rank_correlation')}) | {cell('mask_share')} / {cell('mask_area')} | "
                  f"{cell('face_share')} / {cell('face_area')} | {cell('correct_with_mask', 0)} |")
    if not args.archs or args.no_cost:
        return report
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
