"""GPU mode, part 1: the model alone, the limit the training and evaluation pipeline is held to.

    python bench/gpu.py                       # ViT-B/16 and BEiT-B/16 at 224 px on the GPU
    python bench/gpu.py --tiny --steps 3      # the same code path on CPU, small (what the tests run)

For each model (random init from its config: speed does not depend on the weights), with and
without torch.compile: a training step (forward, backward, AdamW) and inference, in bf16 autocast
where the GPU has native bfloat16 (else float32), SDPA attention, at batch 32 and at the largest
batch that fits (doubling from 32 until CUDA runs out of memory; not searched on CPU). Each
figure is images/s, the median of --repeats timed runs of --steps steps, with its min-max.

Not here yet: part 2 (the project's Trainer + cache + device-side augmentation as a ratio to
these figures) and part 3 (a real train.py run), which issue 15 asks for on a lent GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TINY = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64}


def build(name: str, tiny: bool) -> torch.nn.Module:
    from transformers import BeitConfig, BeitForImageClassification, ViTConfig, ViTForImageClassification

    extra = TINY if tiny else {}
    if name == "vit-base":  # google/vit-base-patch16-224-in21k's architecture (ViTConfig's defaults)
        return ViTForImageClassification(ViTConfig(num_labels=2, attn_implementation="sdpa", **extra))
    if name == "beit-base":  # microsoft/beit-base-patch16-224-pt22k-ft22k's architecture
        config = BeitConfig(num_labels=2, use_relative_position_bias=True, use_mean_pooling=True,
                            layer_scale_init_value=0.1, attn_implementation="sdpa", **extra)
        return BeitForImageClassification(config)
    raise ValueError(f"unknown model {name!r}: vit-base or beit-base")


def precision(device: torch.device) -> Optional[torch.dtype]:
    from facemask.training.performance import _gpu_has_native_bf16

    return torch.bfloat16 if device.type == "cuda" and _gpu_has_native_bf16() else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(step, batch: int, steps: int, repeats: int, device: torch.device) -> Dict[str, float]:
    step()  # warm-up: compilation, cuDNN autotuning, allocator growth
    step()
    _sync(device)
    rates: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(batch * steps / (time.perf_counter() - start))
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def measure(name: str, batch: int, compiled: bool, args: argparse.Namespace, device: torch.device) -> Dict[str, Any]:
    torch.manual_seed(0)
    model = build(name, args.tiny).to(device)
    side = model.config.image_size
    dtype = precision(device)
    pixels = torch.randn(batch, 3, side, side, device=device)
    labels = torch.randint(0, 2, (batch,), device=device)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    def train_step() -> None:
        with autocast:
            loss = forward(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer_step() -> None:
        with torch.inference_mode(), autocast:
            forward(pixel_values=pixels)

    model.train()
    training = rate(train_step, batch, args.steps, args.repeats, device)
    model.eval()
    inference = rate(infer_step, batch, args.steps, args.repeats, device)
    return {"model": name, "batch": batch, "compiled": compiled, "side": side,
            "dtype": str(dtype or torch.float32).replace("torch.", ""), "train_images_per_s": training,
            "inference_images_per_s": inference}


def largest_batch(name: str, args: argparse.Namespace, device: torch.device) -> Optional[int]:
    """The largest power-of-two batch (from 32) whose training step fits in GPU memory."""
    if device.type != "cuda":
        return None
    good, batch = None, 32
    while batch <= args.max_batch:
        try:
            measure(name, batch, False, argparse.Namespace(**{**vars(args), "steps": 1, "repeats": 1}), device)
            good, batch = batch, batch * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return good


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit-base", "beit-base"])
    parser.add_argument("--tiny", action="store_true", help="tiny configs at 32 px (CPU test of this script)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="both")
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from facemask.training.performance import _can_compile

    can_compile, why = _can_compile(device.type == "cuda")
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    if not can_compile:
        print(f"torch.compile not measured: {why}")
        modes = [m for m in modes if not m]
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    print(f"{machine}; torch {torch.__version__}; {'tiny configs' if args.tiny else 'base configs'}")
    rows = []
    for name in args.models:
        batches = [args.batch]
        biggest = largest_batch(name, args, device)
        if biggest and biggest != args.batch:
            batches.append(biggest)
        for batch in batches:
            for compiled in modes:
                row = measure(name, batch, compiled, args, device)
                rows.append(row)
                t, i = row["train_images_per_s"], row["inference_images_per_s"]
                print(f"{name:10} batch {batch:5} compile {str(compiled):5} {row['dtype']:8} train "
                      f"{t['median']:9.1f} ({t['min']:.1f}-{t['max']:.1f})  inference {i['median']:9.1f} "
                      f"({i['min']:.1f}-{i['max']:.1f}) images/s")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"machine": machine, "torch": torch.__version__, "rows": rows},
                                            indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
