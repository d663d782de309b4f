"""CPU speed of `python -m facemask detect`: the face detector alone, and detector + classifier.

    .venv/bin/python bench/detect.py                            # tiny ViT and ViT-B/16, torch and onnx-int8
    .venv/bin/python bench/detect.py --models tiny --repeats 1  # the code path, quickly (what the test runs)

Frames: scenes of 640x480 and 1920x1080 made of real face crops (scikit-image's astronaut
portrait, a requirements-dev package) pasted at several sizes, half with a drawn mask, the way the
tests compose them (tests/conftest.py). Each arm runs `SceneClassifier.faces` (detect on a copy
shrunk to --max-side, crop, classify the crops in one batch) on each frame; the classifiers are
random-init from their configs (speed does not depend on the weights), saved as a run folder and
loaded by `evaluation.loading.load_classifier`, torch or the graph `python -m facemask export` writes
(`--backend onnx-int8`). The arms take turns within each repeat, so a slow spell of a noisy machine
hits them alike. Printed per arm and frame size: images/s and faces/s, median (min-max) over the
repeats. Threads: PyTorch's and onnxruntime's defaults (every core).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import interleaved_rates, median_range, write_json  # noqa: E402

SIZES = {"640x480": ((640, 480), ((40, 60, 0.8), (240, 200, 0.55), (420, 80, 1.0), (540, 330, 0.35))),
         "1920x1080": ((1920, 1080), ((100, 120, 2.0), (800, 400, 1.4), (1400, 160, 2.6), (1500, 700, 1.3),
                                       (300, 700, 0.9), (1100, 100, 0.7)))}


def run_folder(name: str, work: Path) -> Path:
    """A classifier saved as a run folder would be, exported to ONNX fp32 and int8."""
    from gpu import TINY, build
    from transformers import ViTImageProcessor

    from facemask.publish.export import DEFAULT_OPSET, export_graph, quantize_int8
    from facemask.run_folder import ONNX_DIR, ONNX_FILES

    model = build("vit-base", name == "tiny")
    model.config.id2label, model.config.label2id = {0: "with_mask", 1: "without_mask"}, {"with_mask": 0,
                                                                                         "without_mask": 1}
    side = TINY["image_size"] if name == "tiny" else model.config.image_size
    folder = work / name
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": side, "width": side}).save_pretrained(folder)
    (folder / ONNX_DIR).mkdir()
    export_graph(model.eval(), side, folder / ONNX_DIR / ONNX_FILES["onnx"], DEFAULT_OPSET)
    quantize_int8(folder / ONNX_DIR / ONNX_FILES["onnx"], folder / ONNX_DIR / ONNX_FILES["onnx-int8"])
    return folder


def main(argv: List[str] | None = None) -> Dict[str, Dict]:
    from conftest import compose_scene

    from facemask.detection.detectors import load_detector
    from facemask.detection.scenes import SceneClassifier
    from facemask.evaluation.loading import load_classifier

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tiny", "vit-base"], choices=["tiny", "vit-base"])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx-int8"], choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iters", type=int, default=5, help="frames per timing")
    parser.add_argument("--max-side", type=int, default=1280, help="detect's --max-side")
    parser.add_argument("--output", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    print(f"detect on the CPU, {platform.processor() or platform.machine()}, {torch.get_num_threads()} PyTorch "
          f"threads, torch {torch.__version__}, --max-side {args.max_side}")
    detector = load_detector()
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory(prefix="facemask-detect-bench-") as work:
        arms: Dict[str, Callable[[Any], int]] = {}
        for name in args.models:
            folder = run_folder(name, Path(work))
            for backend in args.backends:
                scene = SceneClassifier(load_classifier(str(folder), backend), detector, max_side=args.max_side)
                # The detector's part alone: SceneClassifier.find, what `faces` does before the crops.
                arms.setdefault("detector only", lambda image, find=scene.find: len(find(image)[0]))
                arms[f"+ {'tiny ViT' if name == 'tiny' else 'ViT-B/16'} {backend}"] = (
                    lambda image, faces=scene.faces: len(faces(image).boxes))
        for size in args.sizes:
            canvas, known = compose_scene(*SIZES[size])
            faces = {arm: run(canvas) for arm, run in arms.items()}  # warm-up, and the count
            rates = interleaved_rates({arm: (lambda run=run: run(canvas)) for arm, run in arms.items()},
                                      args.repeats, args.iters)
            print(f"\n{size}, {len(known)} faces pasted ({args.repeats} repeats of {args.iters} frames)")
            print(f"  {'arm':<26} {'faces found':>11}  {'images/s median (min-max)':<28} faces/s median")
            for arm, values in rates.items():
                median = statistics.median(values)
                results[f"{size} {arm}"] = {"faces": faces[arm], "images_per_s": median, "min": min(values),
                                            "max": max(values), "faces_per_s": median * faces[arm]}
                print(f"  {arm:<26} {faces[arm]:>11}  {median_range(values, 2, width=8)}{'':<10}"
                      f"{median * faces[arm]:>8.1f}")
    if args.output:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
