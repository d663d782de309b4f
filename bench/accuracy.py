"""Accuracy benchmark: does our input pipeline teach the model as well as the transformers example's?

    .bench-venv/bin/python bench/accuracy.py [--sizes 96 224] [--crop-scales 0.5,1 0.08,1] [--seeds 0 1 2]

Three arms train the same tiny ViT (192 wide, 12 layers) from the same config, on the same drawn
photographs (100-2000 px, three in four JPEG, the rest PNG; drawn with detail up to --detail px,
then resized and given sensor-like noise), for the same epochs with the same TrainingArguments
(optimizer, schedule, batch, workers), and are scored on the same separate test folder:
  cache        python train.py: our default pipeline (preprocessing cache, batched crops);
  per_image    the same with data.preprocess=per_image (PIL crop and resize each sample);
  torchvision  the transformers image-classification example's pipeline: train_test_split of the
               train folder, torchvision RandomResizedCrop + RandomHorizontalFlip on the decoded
               image, Resize + CenterCrop for evaluation, the processor's mean and std.
Before training, what the model sees is compared pixel by pixel: each of our paths' training crops
and evaluation images against the example's, for the same crop boxes (fidelity()).
Each run is a fresh process; arms alternate within each seed. Printed per setting: each arm's
mean test accuracy with its standard error over the seeds and every seed's value, the gap to the
example with its standard error, and training samples/s (median and range).

torchvision is never a dependency of the project: there is no CPU build of it here, and installed
beside the CPU torch it breaks transformers. The benchmark runs in its own virtual environment,
with the registry's (CUDA) build of torch, which runs on the CPU too:

    python3 -m venv .bench-venv
    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= .bench-venv/bin/pip install \\
        --extra-index-url file:///opt/pypi/simple --extra-index-url file:///opt/pypi-more/simple \\
        torch==2.13.0 torchvision==0.28.0
    .bench-venv/bin/pip install -r requirements.txt

(the PIP_ settings keep pip from taking the local CPU wheel of torch; elsewhere a plain
`pip install torch==2.13.0 torchvision==0.28.0 -r requirements.txt` does). At 224 px the model's
patches are 32 px (--patch-size) so that a run costs about what a 96 px run with 16 px patches does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ARMS = ("cache", "per_image", "torchvision")
MODEL = {"model_type": "vit", "hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3,
         "intermediate_size": 768, "num_channels": 3}


def overrides(folder: Path, size: int, patch: int, scale: list, seed: int, arm: str, work: Path,
              epochs: int, lr: float) -> list:
    """The one config every arm trains from (the torchvision arm reads its TrainingArguments too)."""
    preprocess = "per_image" if arm == "per_image" else "cache"
    return [f"data.train_dir={folder / 'train'}", f"data.test_dir={folder / 'test'}",
            "data.validation_split=0.15", f"data.crop_scale=[{scale[0]}, {scale[1]}]",
            f"data.preprocess={preprocess}", f"data.preprocess_dir={work / 'cache'}",
            f"training.output_dir={work / 'out'}", f"training.seed={seed}",
            f"training.num_train_epochs={epochs}", f"training.learning_rate={lr}", "training.weight_decay=0.05",
            "training.warmup_steps=0.1", "training.per_device_train_batch_size=32",
            "training.per_device_eval_batch_size=64", "training.eval_strategy=epoch",
            "training.save_strategy=no", "training.logging_strategy=epoch", "training.report_to=none",
            "training.disable_tqdm=true", "training.use_cpu=true",
            *(f"model.from_config.{k}={v}" for k, v in {**MODEL, "image_size": size, "patch_size": patch}.items())]


def run_ours(argv: list) -> dict:
    import train

    out = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("training.output_dir=")))
    base = out.parent / "base.yaml"  # train.py takes a config file; every setting is an override
    base.parent.mkdir(parents=True, exist_ok=True)
    base.write_text("{}\n")
    train.main([str(base), *argv])
    results = json.loads((out / "all_results.json").read_text())
    return {"test_accuracy": results["test_accuracy"], "train_samples_per_s": results["train_samples_per_second"]}


def run_example(argv: list) -> dict:
    """The transformers example's data path (examples/pytorch/image-classification/
    run_image_classification.py), with the model, TrainingArguments and crop scale of our config."""
    import datasets
    import numpy as np
    import torch
    from torchvision.transforms import (
        CenterCrop,
        Compose,
        Normalize,
        RandomHorizontalFlip,
        RandomResizedCrop,
        Resize,
        ToTensor,
    )
    from transformers import Trainer, set_seed

    from facemask.config.loading import load_config
    from facemask.pipeline.processor import load_image_processor
    from facemask.training.arguments import training_arguments
    from facemask.training.modeling import build_model

    cfg = load_config(None, argv)
    args = training_arguments(cfg)
    set_seed(args.seed)
    dataset = datasets.load_dataset("imagefolder", data_files={"train": f"{cfg.data.train_dir}/**",
                                                               "test": f"{cfg.data.test_dir}/**"})
    split = dataset["train"].train_test_split(cfg.data.validation_split)
    train_ds, eval_ds, test_ds = split["train"], split["test"], dataset["test"]
    labels = train_ds.features["label"].names
    processor = load_image_processor(cfg.model)
    model = build_model(cfg.model, dict(enumerate(labels)), {name: i for i, name in enumerate(labels)})

    size = (processor.size["height"], processor.size["width"])
    normalize = Normalize(mean=processor.image_mean, std=processor.image_std)
    train_tf = Compose([RandomResizedCrop(size, scale=tuple(cfg.data.crop_scale)), RandomHorizontalFlip(),
                        ToTensor(), normalize])
    eval_tf = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def transform(tf):
        def apply(batch):
            batch["pixel_values"] = [tf(image.convert("RGB")) for image in batch["image"]]
            return batch
        return apply

    train_ds.set_transform(transform(train_tf))
    eval_ds.set_transform(transform(eval_tf))
    test_ds.set_transform(transform(eval_tf))

    def collate(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    def accuracy(prediction):
        return {"accuracy": float(np.mean(np.argmax(prediction.predictions, axis=1) == prediction.label_ids))}

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      compute_metrics=accuracy, data_collator=collate)
    result = trainer.train()
    test = trainer.evaluate(test_ds, metric_key_prefix="test")
    return {"test_accuracy": test["test_accuracy"], "train_samples_per_s": result.metrics["train_samples_per_second"]}


BUCKETS = ((0.0, 0.25), (0.25, 0.5), (0.5, 1.01))


def fidelity(folder: Path, size: int, scale: list, images: int, preprocess_scale: float | None = None) -> dict:
    """What the model sees, against what the example shows it: each training crop (and each
    evaluation image) as each of our paths makes it, against the same crop box cut from the fully
    decoded image and resized with PIL's bilinear filter (torchvision's resized_crop on a PIL image).
    Mean absolute difference in 0-255 levels, per crop-area bucket."""
    import random

    import numpy as np
    import torch
    from PIL import Image

    from facemask.config.schema import DataConfig, ModelConfig
    from facemask.data.images import load_image
    from facemask.pipeline.augment import BatchTransform
    from facemask.pipeline.cache import CacheSpec, _encode_batch
    from facemask.pipeline.geometry import random_resized_crop_box
    from facemask.pipeline.processor import load_image_processor

    processor = load_image_processor(ModelConfig(from_config={**MODEL, "image_size": size, "patch_size": 16}))
    cfg = DataConfig(crop_scale=scale)
    if preprocess_scale is not None:
        cfg.preprocess_scale = preprocess_scale
    train_spec = CacheSpec.for_split(processor, train=True, scale=cfg.preprocess_scale)
    eval_spec = CacheSpec.for_split(processor, train=False)
    batch = BatchTransform(processor, cfg, size)
    rng = random.Random(0)
    paths = sorted((folder / "train").glob("*/*"))
    paths = [paths[i] for i in sorted(rng.sample(range(len(paths)), min(images, len(paths))))]
    errors = {"cache": {b: [] for b in BUCKETS}, "per_image": {b: [] for b in BUCKETS}}
    evals = {"cache": [], "per_image": []}

    def as_array(image):
        return np.asarray(image, dtype=np.float32)

    for path in paths:
        full = load_image(str(path))
        item = {"bytes": None, "path": str(path)}
        cached = _encode_batch({"image": [item]}, [0], image_column="image", spec=train_spec, processor=processor)
        stored = torch.frombuffer(bytearray(cached["pixels"][0]), dtype=torch.uint8).view(
            1, train_spec.side, train_spec.side, 3).permute(0, 3, 1, 2)
        draft = load_image(str(path), 2 * size)  # the per-image path's decode
        ref_eval = as_array(full.resize((size, size), Image.BILINEAR))
        eval_cached = _encode_batch({"image": [item]}, [0], image_column="image", spec=eval_spec, processor=processor)
        evals["cache"].append(np.abs(np.frombuffer(eval_cached["pixels"][0], np.uint8).reshape(size, size, 3)
                                     - ref_eval).mean())
        evals["per_image"].append(np.abs(as_array(draft.resize((size, size), Image.BILINEAR)) - ref_eval).mean())
        for _ in range(8):
            box = random_resized_crop_box(full.width, full.height, scale, cfg.crop_ratio, rng)
            area = (box[2] - box[0]) * (box[3] - box[1]) / (full.width * full.height)
            bucket = next(b for b in BUCKETS if b[0] <= area < b[1])
            ref = as_array(full.crop(box).resize((size, size), Image.BILINEAR))
            fractions = [box[0] / full.width, box[1] / full.height, box[2] / full.width, box[3] / full.height, 0.0]
            ours = batch._resize_each(stored, [fractions])[0].permute(1, 2, 0).numpy()
            errors["cache"][bucket].append(np.abs(ours - ref).mean())
            sx, sy = draft.width / full.width, draft.height / full.height
            per_box = (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))
            per = as_array(draft.crop(per_box).resize((size, size), Image.BILINEAR))
            errors["per_image"][bucket].append(np.abs(per - ref).mean())
    out = {}
    for path_name in errors:
        out[path_name] = {f"crop area {lo:.2f}-{min(hi, 1):.2f}": float(np.mean(v)) if v else None
                          for (lo, hi), v in errors[path_name].items()}
        out[path_name]["evaluation"] = float(np.mean(evals[path_name]))
    out["cache_side"] = train_spec.side
    return out


def print_fidelity(size: int, scale: list, result: dict) -> None:
    print(f"\nwhat the model sees at {size} px, crop scale {scale}: mean |ours - example| in 0-255 levels "
          f"(cached training side {result['cache_side']} px)")
    for path_name in ("cache", "per_image"):
        print(f"  {path_name:<10} " + ", ".join(f"{k}: {v:.2f}" for k, v in result[path_name].items() if v is not None))


def child(arm: str, argv: list) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_example(argv) if arm == "torchvision" else run_ours(argv)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_arm(arm: str, argv: list, log: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", arm, *argv]
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    lines = [line for line in log.read_text().splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{arm} failed (exit {proc.returncode}); the end of its log:\n{tail}")
    return json.loads(lines[-1][len("RESULT "):])


def ensure_photos(root: Path, train: int, test: int, detail: int) -> Path:
    """The drawn photographs, kept between runs (drawing large images takes minutes)."""
    from pipeline import make_folder

    folder = root / f"photos-{train}-{test}-detail{detail}"
    if not (folder / "complete").is_file():
        start = time.perf_counter()
        make_folder(folder / "train", train, seed=1, detail=detail, processes=os.cpu_count() or 1)
        make_folder(folder / "test", test, seed=2, detail=detail, processes=os.cpu_count() or 1)
        (folder / "complete").write_text("")
        print(f"drew {train} + {test} photographs in {time.perf_counter() - start:.0f} s: {folder}", flush=True)
    return folder


def summarise(values: list) -> dict:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": mean, "se": se, "values": values}


def report(setting: str, runs: dict) -> dict:
    summary = {}
    print(f"\n{setting}")
    print(f"  {'arm':<12} {'test accuracy: mean +- SE (seeds)':<52} train samples/s: median (range)")
    for arm, results in runs.items():
        acc = summarise([r["test_accuracy"] for r in results])
        speed = [r["train_samples_per_s"] for r in results]
        summary[arm] = {"accuracy": acc, "train_samples_per_s": {"median": statistics.median(speed),
                                                                  "min": min(speed), "max": max(speed)}}
        seeds = " / ".join(f"{v:.3f}" for v in acc["values"])
        print(f"  {arm:<12} {acc['mean']:.3f} +- {acc['se']:.3f} ({seeds}){'':<8} "
              f"{statistics.median(speed):.1f} ({min(speed):.1f}-{max(speed):.1f})")
    if "torchvision" in summary:
        ref = summary["torchvision"]["accuracy"]
        for arm in summary:
            if arm != "torchvision":
                own = summary[arm]["accuracy"]
                gap, se = own["mean"] - ref["mean"], math.hypot(own["se"], ref["se"])
                summary[arm]["gap_to_example"] = {"gap": gap, "se": se}
                print(f"  {arm} - torchvision: {gap:+.3f} +- {se:.3f}")
    return summary


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--crop-scales", nargs="+", default=["0.5,1", "0.08,1"],
                        help="data.crop_scale values as LOW,HIGH (0.5,1 is our default; 0.08,1 torchvision's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--detail", type=int, default=448, help="photos are drawn at up to this side, then resized")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patch-size", type=int, help="default: 16 up to 128 px, 32 above")
    parser.add_argument("--fidelity-images", type=int, default=40,
                        help="photos whose crops are compared pixel by pixel with the example's (0: skip)")
    parser.add_argument("--data-dir", help="where the drawn photographs are kept (default: beside datasets' cache)")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "accuracy.json"))
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1:])
    try:
        import torchvision  # noqa: F401
    except ImportError:
        parser.error("torchvision is not installed in this environment: build the bench-only one (see --help)")

    from facemask.data.storage import cache_root

    photos = ensure_photos(Path(args.data_dir) if args.data_dir else cache_root(), args.train_images,
                           args.test_images, args.detail)
    results = {"settings": vars(args), "photos": str(photos), "runs": {}, "summary": {}}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facemask-accuracy-") as tmp:
        for size in args.sizes:
            patch = args.patch_size or (16 if size <= 128 else 32)
            for scale_text in args.crop_scales:
                scale = [float(v) for v in scale_text.split(",")]
                setting = f"{size} px (patch {patch}), crop scale {scale}, {args.epochs} epochs"
                if args.fidelity_images:
                    seen = fidelity(photos, size, scale, args.fidelity_images)
                    print_fidelity(size, scale, seen)
                    results.setdefault("fidelity", {})[setting] = seen
                runs = {arm: [] for arm in args.arms}
                for n, seed in enumerate(args.seeds):
                    # Rotate the arms' order each seed, so a drift in the machine's speed hits each alike.
                    for arm in args.arms[n % len(args.arms):] + args.arms[:n % len(args.arms)]:
                        work = Path(tmp) / f"{size}-{scale_text}-{seed}-{arm}"
                        argv_arm = overrides(photos, size, patch, scale, seed, arm, work, args.epochs, args.lr)
                        result = run_arm(arm, argv_arm, Path(tmp) / f"{work.name}.log")
                        runs[arm].append(result)
                        print(f"  {setting} seed {seed} {arm}: {json.dumps(result)}", flush=True)
                results["runs"][setting] = runs
                results["summary"][setting] = report(setting, runs)
                output.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
