"""Input-pipeline benchmark: is training and evaluation as fast as the model allows?

    python bench/pipeline.py [--sizes 96 224] [--images 512] [--output bench/results/pipeline.json]

For the quickstart's tiny ViT at each size, on a folder of real-sized JPEGs and PNGs (100-2000 px)
that the script draws, it measures, each in a fresh process (so peak memory is its own):
  1. model only: training steps and inference on pre-made tensors (the limit);
  2. the project's pipeline: Trainer training and prediction from the preprocessing cache,
     as a ratio to (1) measured again in the same process, interleaved with it (training: one
     model-only step between two Trainer steps; evaluation: a model-only pass after each
     prediction pass), as on a shared machine runs minutes apart differ by up to 20%;
     building the cache is timed on its own;
  3. the per-image path (data.preprocess=per_image: PIL open, convert, crop, resize every sample,
     every epoch), as a ratio to (2);
  4. the input pipeline alone on one core (no model): images/s from the cache (gather, crop,
     flip, normalise) against the per-image path;
  5. peak resident memory of each process.
Training throughput is timed over steps after a warm-up; evaluation is Trainer.predict's own
samples/s over the split (metrics included), against model-only inference at the same batch size.
Steps (2)-(4) are repeated (--repeats, alternating the cached and per-image processes), and each
figure and ratio is printed as the median over the repeats with its spread (min-max): a single
ratio from one run says little on a machine whose speed drifts by 20%.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import median_range, write_json  # noqa: E402

TRAIN_BATCH, EVAL_BATCH = 32, 128
MODEL = {"model_type": "vit", "patch_size": 8, "num_channels": 3, "hidden_size": 64, "num_hidden_layers": 4,
         "num_attention_heads": 4, "intermediate_size": 128}


def _draw_photo(seed: int, index: int, detail: int):
    """One drawn face as a photo of real-world size: drawn at up to `detail` px (drawing costs
    grow with the square of the side), resized to 100-2000 px, with sensor-like noise."""
    import numpy as np
    from PIL import Image

    from facemask.data import synthetic

    rng = random.Random(seed * 1_000_003 + index)
    side = rng.randint(100, 2000)
    aspect = rng.uniform(0.75, 1.33)
    image, label = synthetic.sample(seed, index, min(detail, side))
    image = image.resize((side, max(100, int(side * aspect))), Image.BICUBIC)
    grain = np.random.default_rng(seed * 1_000_003 + index).normal(0, 6, (image.height, image.width, 1))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8)), label


def _write_photo(root: Path, seed: int, index: int, detail: int, copies: int) -> None:
    from facemask.data import synthetic

    image, label = _draw_photo(seed, index, detail)
    folder = root / synthetic.CLASS_NAMES[label]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{index:05d}.png" if index % 4 == 3 else f"{index:05d}.jpg")
    if path.suffix == ".png":
        image.save(path, compress_level=6)
    else:
        image.save(path, quality=90)
    for copy in range(1, copies):
        os.link(path, path.with_name(f"{path.stem}-{copy}{path.suffix}"))


def make_folder(root: Path, num_images: int, copies: int = 1, seed: int = 0, detail: int = 160,
                processes: int = 1) -> Path:
    """Drawn faces at 100-2000 px with photo-like noise, drawn at up to `detail` px: three in four
    JPEG, the rest PNG; each file is also linked `copies - 1` more times under other names."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(root, seed, index, detail, copies) for index in range(num_images)]
    if processes <= 1:
        for job in jobs:
            _write_photo(*job)
    else:
        with ProcessPoolExecutor(processes) as pool:
            list(pool.map(_write_photo, *zip(*jobs), chunksize=16))
    return root


def _config(folder: str, cache: str, size: int, preprocess: str):
    from facemask.config.loading import load_config

    overrides = [f"data.train_dir={folder}", "data.validation_split=0.75", f"data.preprocess={preprocess}",
                 f"data.preprocess_dir={cache}", "data.audit=false",
                 f"training.per_device_train_batch_size={TRAIN_BATCH}",
                 f"training.per_device_eval_batch_size={EVAL_BATCH}", "training.report_to=none",
                 "training.disable_tqdm=true", "training.save_strategy=no", "training.eval_strategy=no",
                 "training.logging_strategy=no", "training.use_cpu=true", "training.seed=0",
                 f"training.output_dir={Path(cache).parent / 'out'}",
                 *(f"model.from_config.{k}={v}" for k, v in {**MODEL, "image_size": size}.items())]
    return load_config(None, overrides)


def _model_step(model, size: int):
    """One training step on pre-made tensors, as a callable: the model's own speed."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(TRAIN_BATCH, 3, size, size), torch.randint(0, 2, (TRAIN_BATCH,))

    def step() -> None:
        model(pixel_values=x, labels=y).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def _train_rate(model, size: int, steps: int) -> float:
    """Images/s of the median of `steps` training steps on pre-made tensors."""
    step = _model_step(model, size)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return TRAIN_BATCH / statistics.median(times)


def _eval_rate(model, size: int, batches: int) -> float:
    """Images/s of one inference pass over `batches` pre-made batches."""
    import torch

    model.eval()
    xe = torch.randn(EVAL_BATCH, 3, size, size)
    with torch.inference_mode():
        model(pixel_values=xe)
        start = time.perf_counter()
        for _ in range(batches):
            model(pixel_values=xe).logits.cpu()
        return batches * EVAL_BATCH / (time.perf_counter() - start)


def _tiny_vit(size: int):
    from transformers import AutoConfig, AutoModelForImageClassification

    return AutoModelForImageClassification.from_config(AutoConfig.for_model(**MODEL, image_size=size, num_labels=2))


def measure_model(size: int, steps: int, eval_batches: int) -> dict:
    """Median training step; best of three inference passes over as many images as the eval split."""
    import torch

    torch.manual_seed(0)
    model = _tiny_vit(size)
    return {"train_images_per_s": _train_rate(model, size, steps),
            "eval_images_per_s": max(_eval_rate(model, size, eval_batches) for _ in range(3))}


def _pipeline(folder: str, cache: str, size: int, preprocess: str):
    from facemask.data.prepare import prepare_data
    from facemask.pipeline.inputs import prepare_inputs
    from facemask.pipeline.processor import load_image_processor
    from facemask.training.arguments import training_arguments

    cfg = _config(folder, cache, size, preprocess)
    args = training_arguments(cfg)
    data = prepare_data(cfg.data, cfg.seed, size).data
    processor = load_image_processor(cfg.model)
    pipeline = prepare_inputs(data, processor, cfg, args)
    return cfg, data, processor, pipeline


def measure_cache_build(folder: str, cache: str, size: int, num_proc: int) -> dict:
    """Every split's cache, built as a first run builds it (fingerprinting included)."""
    from facemask.data.prepare import prepare_data
    from facemask.pipeline.inputs import prepare_inputs
    from facemask.pipeline.processor import load_image_processor

    cfg = _config(folder, cache, size, "cache")
    cfg.data.preprocess_num_proc = num_proc
    data = prepare_data(cfg.data, cfg.seed, size).data
    reports = prepare_inputs(data, load_image_processor(cfg.model), cfg).cache_reports
    if any(r.reused for r in reports):
        raise RuntimeError(f"{cache} already held a cache: the build was not measured")
    images, seconds = sum(r.images for r in reports), sum(r.seconds for r in reports)
    return {"images": images, "seconds": seconds, "processes": num_proc, "images_per_s": images / seconds}


def measure_pipeline(folder: str, cache: str, size: int, preprocess: str, steps: int, eval_batches: int,
                     reference: bool = True) -> dict:
    """The Trainer from the project's datasets; with `reference`, the model alone is measured in
    the same process, interleaved, so that drifts in the machine's load (it is shared) cancel out."""
    from transformers import TrainerCallback

    from facemask.training.arguments import training_arguments
    from facemask.training.modeling import build_model
    from facemask.training.trainer import build_trainer

    cfg, data, processor, pipeline = _pipeline(folder, cache, size, preprocess)
    built = [r.images for r in pipeline.cache_reports if not r.reused]
    warmup = 3
    cfg.training["max_steps"] = warmup + steps
    args = training_arguments(cfg)
    model = build_model(cfg.model, data.id2label, data.label2id)
    alone = _tiny_vit(size)
    alone_step = _model_step(alone, size)
    trainer_times, alone_times, resumed = [], [], []

    class Interleave(TrainerCallback):
        """Times each Trainer step from the end of the previous one (reading, augmenting, the
        step, the Trainer's own work) and, between two of them, one model-only step: both see
        the same machine load, step by step."""

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if resumed and state.global_step > warmup:
                trainer_times.append(now - resumed[-1])
            if reference:
                start = time.perf_counter()
                alone_step()
                if state.global_step > warmup:
                    alone_times.append(time.perf_counter() - start)
            resumed.append(time.perf_counter())

    trainer = build_trainer(model, args, data, processor, cfg, pipeline)
    trainer.add_callback(Interleave())
    trainer.train()
    train = TRAIN_BATCH / statistics.median(trainer_times)
    result = {"train_images_per_s": train, "eval_images": len(pipeline.splits["validation"]),
              "cache_images_built_here": sum(built)}
    # Trainer.predict's own samples/s over the validation split, best of three, each pass beside
    # a model-only pass over as many images (the per-image path, far from the limit: one pass).
    predicted, alone_rates = [], []
    for _ in range(3 if reference else 1):
        predicted.append(trainer.predict(pipeline.splits["validation"]).metrics["test_samples_per_second"])
        if reference:
            alone_rates.append(_eval_rate(alone, size, eval_batches))
    result["eval_images_per_s"] = max(predicted)
    if reference:
        result["model_train_images_per_s"] = TRAIN_BATCH / statistics.median(alone_times)
        result["model_eval_images_per_s"] = max(alone_rates)
    return result


def measure_input_only(folder: str, cache: str, size: int, preprocess: str, batches: int) -> dict:
    """Batches as training reads them, without a model, on one core."""
    import torch

    torch.set_num_threads(1)
    cfg, data, processor, pipeline = _pipeline(folder, cache, size, preprocess)
    loader = torch.utils.data.DataLoader(pipeline.splits["train"], batch_size=TRAIN_BATCH, shuffle=True,
                                         collate_fn=pipeline.collate, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    transform = pipeline.batch_transform
    images, start = 0, None
    while images < (batches + 1) * TRAIN_BATCH:
        for batch in loader:
            values = transform(batch, train=True)["pixel_values"] if transform else batch["pixel_values"]
            assert values.shape[-1] == size and values.dtype == torch.float32
            if start is None:  # the first batch pays for the loader's start
                start = time.perf_counter()
                continue
            images += len(values)
            if images >= batches * TRAIN_BATCH:
                break
    return {"images_per_s_per_core": images / (time.perf_counter() - start)}


def child(argv: list) -> int:
    kind, params = argv[0], json.loads(argv[1])
    result = globals()[f"measure_{kind}"](**params)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))
    return 0


def run(kind: str, **params) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(params)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{kind} {params} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--images", type=int, default=512, help="images drawn for the folder")
    parser.add_argument("--copies", type=int, default=3, help="files per drawn image (1/4 train, 3/4 eval)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the measurements (2)-(4)")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "pipeline.json"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child)

    cores = os.cpu_count()
    report = {"cores": cores, "images": args.images, "copies": args.copies, "repeats": args.repeats,
              "train_batch": TRAIN_BATCH, "eval_batch": EVAL_BATCH,
              "model": MODEL, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "photos", args.images, args.copies)
        files = args.images * args.copies
        report["files"] = files
        megapixels = sum(_pixels(p) for p in folder.rglob("*.*")) / files / 1e6
        report["mean_megapixels"] = round(megapixels, 2)
        for size in args.sizes:
            cache = str(Path(tmp) / f"cache-{size}")
            steps = 30 if size <= 128 else 12
            eval_batches = -(-(files - files // 4) // EVAL_BATCH)
            row = {"model": run("model", size=size, steps=steps, eval_batches=eval_batches)}
            # First at one process, per core; then rebuilt on every core, as a run builds it.
            row["cache_build_1_core"] = run("cache_build", folder=str(folder), cache=cache + "-1", size=size,
                                            num_proc=1)
            row["cache_build"] = run("cache_build", folder=str(folder), cache=cache, size=size, num_proc=cores)
            for name in ("cached", "per_image", "input_cached", "input_per_image"):
                row[name] = []
            for _ in range(args.repeats):
                row["cached"].append(run("pipeline", folder=str(folder), cache=cache, size=size, preprocess="cache",
                                         steps=steps, eval_batches=eval_batches))
                row["per_image"].append(run("pipeline", folder=str(folder), cache=cache, size=size,
                                            preprocess="per_image", steps=steps, eval_batches=eval_batches,
                                            reference=False))
                row["input_cached"].append(run("input_only", folder=str(folder), cache=cache, size=size,
                                               preprocess="cache", batches=40))
                row["input_per_image"].append(run("input_only", folder=str(folder), cache=cache, size=size,
                                                  preprocess="per_image", batches=4))
            report["sizes"][str(size)] = row
            print_table(report, size)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.output, report)
    print(f"\nwrote {args.output}")
    return 0


def _pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return image.width * image.height


def spread(values: list, digits: int = 1, suffix: str = "") -> str:
    """'median (min-max)' over the repeats; one run's value alone."""
    return median_range(values, digits, suffix=suffix, one_alone=True)


def print_table(report: dict, size: int) -> None:
    row = report["sizes"][str(size)]
    m, b1, b = row["model"], row["cache_build_1_core"], row["cache_build"]
    c, p, ic, ip = row["cached"], row["per_image"], row["input_cached"], row["input_per_image"]

    def rates(runs: list, key: str) -> list:
        return [r[key] for r in runs]

    def ratios(runs: list, key: str, over: list, over_key: str) -> list:
        return [r[key] / o[over_key] for r, o in zip(runs, over)]

    def rss(runs: list) -> float:
        return max(r["peak_rss_mb"] for r in runs)

    print(f"\n{size}x{size}, tiny ViT, {report['cores']} cores, {report['files']} files of "
          f"{report['mean_megapixels']} MP on average (JPEG/PNG; {report['images']} distinct drawn images, "
          f"each under {report['copies']} names)")
    print(f"(2)-(4): median (min-max) over {report['repeats']} repeats; ratios are taken per repeat")
    print(f"{'measurement':<44}{'images/s':>22}{'ratio':>30}{'peak RSS MB':>13}")
    lines = [
        ("1. model only, train step", f"{m['train_images_per_s']:.1f}", "", m["peak_rss_mb"]),
        ("1. model only, inference", f"{m['eval_images_per_s']:.1f}", "", m["peak_rss_mb"]),
        ("   model only, beside (2): train step", spread(rates(c, "model_train_images_per_s")), "", rss(c)),
        ("   model only, beside (2): inference", spread(rates(c, "model_eval_images_per_s")), "", rss(c)),
        ("2. pipeline (cache), training", spread(rates(c, "train_images_per_s")),
         spread(ratios(c, "train_images_per_s", c, "model_train_images_per_s"), 3, " of (1)"), rss(c)),
        ("2. pipeline (cache), evaluation", spread(rates(c, "eval_images_per_s")),
         spread(ratios(c, "eval_images_per_s", c, "model_eval_images_per_s"), 3, " of (1)"), rss(c)),
        ("3. per-image path, training", spread(rates(p, "train_images_per_s")),
         spread(ratios(p, "train_images_per_s", c, "train_images_per_s"), 3, " of (2)"), rss(p)),
        ("3. per-image path, evaluation", spread(rates(p, "eval_images_per_s")),
         spread(ratios(p, "eval_images_per_s", c, "eval_images_per_s"), 3, " of (2)"), rss(p)),
        ("4. input only, from the cache, per core", spread(rates(ic, "images_per_s_per_core")),
         spread(ratios(ic, "images_per_s_per_core", ip, "images_per_s_per_core"), 1, "x per-image"), rss(ic)),
        ("4. input only, per-image path, per core", spread(rates(ip, "images_per_s_per_core")), "", rss(ip)),
        ("   cache build, 1 process, per core", f"{b1['images_per_s']:.1f}", "", b1["peak_rss_mb"]),
        (f"   cache build, {b['processes']} processes", f"{b['images_per_s']:.1f}",
         f"{b['images']} images in {b['seconds']:.1f} s", b["peak_rss_mb"]),
    ]
    for name, rate, ratio, peak in lines:
        print(f"{name:<44}{rate:>22}{ratio:>30}{peak:>13.0f}")


if __name__ == "__main__":
    sys.exit(main())
