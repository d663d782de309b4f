"""CPU inference speed of a shipped model: PyTorch eager, torch.compile, onnxruntime fp32 and int8.

    .venv/bin/python bench/inference.py                         # ViT-B/16 and BEiT-B/16 at 224 px, batch 1 and 32
    .venv/bin/python bench/inference.py --tiny --repeats 2      # the same code path, small (what the test runs)

The models are random-init from their configs (bench/gpu.py's build: speed does not depend on the
weights). The graphs come from `python -m facemask export`'s own export_graph and quantize_int8.
For each model and batch, the four backends take turns within each repeat, so a slow spell of a
noisy machine hits them alike. Each timing is the mean of --iters calls after warm-up calls
(which include torch.compile's compilation for that batch size). Printed per backend: images/s as
median (min-max) over the repeats, the ratio to eager within the same repeat as median (min-max),
and the largest |logit difference| from eager on the timed batch. Threads: PyTorch's default and
onnxruntime's default (both use every core here).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench.common import interleaved_rates, write_json  # noqa: E402

BACKENDS = ("eager", "compile", "onnx", "onnx-int8")


def runners(model: torch.nn.Module, side: int, work: Path) -> Dict[str, Callable[[np.ndarray], np.ndarray]]:
    """One function per backend: pixel_values (N, 3, side, side) float32 -> logits."""
    import onnxruntime

    from facemask.publish.export import DEFAULT_OPSET, export_graph, quantize_int8

    model.eval()
    compiled = torch.compile(model)
    export_graph(model, side, work / "model.onnx", DEFAULT_OPSET)
    quantize_int8(work / "model.onnx", work / "model_quantized.onnx")

    def torch_runner(module: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        def run(pixels: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(pixel_values=torch.from_numpy(pixels)).logits.float().numpy()
        return run

    def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda pixels: session.run(["logits"], {"pixel_values": pixels})[0]

    return {"eager": torch_runner(model), "compile": torch_runner(compiled),
            "onnx": onnx_runner(work / "model.onnx"), "onnx-int8": onnx_runner(work / "model_quantized.onnx")}


def measure(run: Dict[str, Callable[[np.ndarray], np.ndarray]], pixels: np.ndarray, repeats: int, iters: int,
            warmup: int) -> Dict[str, Dict[str, float]]:
    reference = run["eager"](pixels)
    diffs = {}
    for name, fn in run.items():
        for _ in range(warmup):
            out = fn(pixels)
        diffs[name] = float(np.abs(out - reference).max())
    rates = interleaved_rates({name: (lambda fn=fn: fn(pixels)) for name, fn in run.items()}, repeats, iters,
                              len(pixels))
    result = {}
    for name, values in rates.items():
        ratios = [v / e for v, e in zip(values, rates["eager"])]
        result[name] = {"images_per_s": statistics.median(values), "min": min(values), "max": max(values),
                        "ratio_to_eager": statistics.median(ratios), "ratio_min": min(ratios),
                        "ratio_max": max(ratios), "max_abs_logit_diff": diffs[name]}
    return result


def main(argv: List[str] | None = None) -> Dict[str, Dict]:
    from gpu import build

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit-base", "beit-base"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=0, help="calls per timing (default: 20 at batch 1, 3 above)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="tiny models at 32 px: the code path, not the figures")
    parser.add_argument("--output", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    print(f"CPU inference, {platform.processor() or platform.machine()}, {torch.get_num_threads()} PyTorch threads, "
          f"torch {torch.__version__}")
    results: Dict[str, Dict] = {}
    for name in args.models:
        model = build(name, args.tiny)
        side = model.config.image_size
        with tempfile.TemporaryDirectory(prefix="facemask-inference-") as work:
            run = runners(model, side, Path(work))
            for batch in args.batches:
                pixels = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
                iters = args.iters or (20 if batch == 1 else 3)
                figures = measure(run, pixels, args.repeats, iters, args.warmup)
                results[f"{name} batch {batch}"] = figures
                print(f"\n{name} at {side} px, batch {batch} ({args.repeats} repeats of {iters} calls)")
                print(f"  {'backend':<10} {'images/s median (min-max)':<30} {'x eager median (min-max)':<26} max |diff|")
                for backend, f in figures.items():
                    print(f"  {backend:<10} {f['images_per_s']:>8.1f} ({f['min']:.1f}-{f['max']:.1f}){'':<10}"
                          f"{f['ratio_to_eager']:>5.2f} ({f['ratio_min']:.2f}-{f['ratio_max']:.2f}){'':<11}"
                          f"{f['max_abs_logit_diff']:.1e}")
    if args.output:
        write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
