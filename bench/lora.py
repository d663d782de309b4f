"""LoRA (model.peft) against full fine-tuning: what it costs and what it gives.

    .venv/bin/python bench/lora.py cost                       # ViT-B/16 at 224 px, batch 8: share, memory, step time
    .venv/bin/python bench/lora.py transfer --seeds 0 1 2     # accuracy on the studio -> street transfer
    .venv/bin/python bench/lora.py cost --tiny --repeats 1 --steps 1   # the code path (what the test runs)

cost: each (mode, repeat) is its own process, so its peak resident memory (ru_maxrss) is its own;
modes alternate within each repeat so a slow spell of a noisy machine hits both. A step is the
Trainer's: forward, cross-entropy, backward, AdamW over the trainable parameters (random-init
weights and inputs: cost does not depend on their values). LoRA is the project's default, rank 8
on the four attention projections, the head in full.

transfer: outputs/quickstart (trained on drawn "studio" portraits) fine-tuned on the "street"
style by configs/quickstart-lora.yaml, as LoRA and as full fine-tuning (model.peft=null, its own
learning rate), once per seed (the seed draws the street set and its splits); plus the model as it
is (no fine-tuning) on each seed's street test split. Needs `python train.py configs/quickstart.yaml` first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench.common import paired, run_accuracy, spread, trained_results  # noqa: E402
from facemask.run_folder import EXPERIMENT, WEIGHTS  # noqa: E402


def step_child(mode: str, batch: int, steps: int, tiny: bool) -> Dict[str, float]:
    import torch
    from gpu import build

    from facemask.config.schema import PeftConfig
    from facemask.training.lora import adapter_record, add_adapters

    torch.manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build("vit-base", tiny)
    record = {"trainable_parameters": sum(p.numel() for p in model.parameters()),
              "total_parameters": sum(p.numel() for p in model.parameters())}
    if mode == "lora":
        model = add_adapters(model, PeftConfig())
        record = adapter_record(model, PeftConfig())
    model.train()
    side = model.config.image_size
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    pixels = torch.randn(batch, 3, side, side)
    labels = torch.randint(0, 2, (batch,))
    times = []
    for i in range(steps + 1):  # the first step allocates AdamW's state: not timed
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**record, "step_s": statistics.median(times), "peak_rss_mb": peak / 1024,
            "peak_above_imports_mb": (peak - base_rss) / 1024}


def cost(args: argparse.Namespace) -> Dict[str, List[Dict[str, float]]]:
    runs: Dict[str, List[Dict[str, float]]] = {"full": [], "lora": []}
    for _ in range(args.repeats):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "_step", mode, "--batch", str(args.batch), "--steps",
                                  str(args.steps), *(["--tiny"] if args.tiny else [])], capture_output=True, text=True,
                                 check=True, cwd=REPO)
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    name = "tiny ViT" if args.tiny else "ViT-B/16 at 224 px"
    print(f"LoRA vs full fine-tuning: {name}, batch {args.batch}, {args.repeats} repeats x {args.steps} steps, "
          f"{platform.machine()}, {os.cpu_count()} cores")
    print(f"  {'mode':<6} {'trainable':>14} {'share':>7} {'step s median (min-max)':>26} {'peak RSS MB median':>20} "
          f"{'above imports':>14}")
    for mode, rows in runs.items():
        steps = [r["step_s"] for r in rows]
        share = rows[0]["trainable_parameters"] / rows[0]["total_parameters"]
        print(f"  {mode:<6} {rows[0]['trainable_parameters']:>14,} {share:>7.2%} "
              f"{statistics.median(steps):>12.3f} ({min(steps):.3f}-{max(steps):.3f}) "
              f"{statistics.median(r['peak_rss_mb'] for r in rows):>20.0f} "
              f"{statistics.median(r['peak_above_imports_mb'] for r in rows):>14.0f}")
    ratios = [f["step_s"] / lo["step_s"] for f, lo in zip(runs["full"], runs["lora"])]
    # max(..., 1 MB): a tiny model can fit in what the imports already hold.
    memory = [f["peak_above_imports_mb"] / max(lo["peak_above_imports_mb"], 1.0)
              for f, lo in zip(runs["full"], runs["lora"])]
    print(f"  full / LoRA, paired within each repeat: step time {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}), memory above imports {statistics.median(memory):.2f}x "
          f"({min(memory):.2f}-{max(memory):.2f})")
    return runs


def _train(overrides: List[str], folder: Path) -> Dict[str, float]:
    return trained_results("configs/quickstart-lora.yaml", overrides, folder)


def transfer(args: argparse.Namespace) -> Dict[str, List[float]]:
    from facemask.training.repeat import summarise

    base = REPO / args.base
    if not WEIGHTS.path(base).is_file():
        raise SystemExit(f"{base} holds no model: run `python train.py configs/quickstart.yaml` first")
    work = Path(args.work)
    accuracy: Dict[str, List[float]] = {"as is": [], "lora": [], "full": []}
    seconds: Dict[str, List[float]] = {"lora": [], "full": []}
    common = [f"model.name_or_path={base}", *args.overrides]
    for seed in args.seeds:
        arms = {"lora": [f"training.learning_rate={args.lora_lr}"],
                "full": ["model.peft=null", f"training.learning_rate={args.full_lr}"]}
        for arm, extra in arms.items():
            result = _train([*common, f"training.seed={seed}", *extra], work / f"{arm}-seed{seed}")
            accuracy[arm].append(result["test_accuracy"])
            seconds[arm].append(result["train_runtime"])
        run = work / f"lora-seed{seed}"
        zero = work / f"as-is-seed{seed}"
        subprocess.run([sys.executable, "evaluate.py", str(base), "--config", str(EXPERIMENT.path(run)),
                        "--split", "test", "--output-dir", str(zero)], cwd=REPO, check=True, capture_output=True)
        accuracy["as is"].append(run_accuracy(zero))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in accuracy.items()), flush=True)
    print(f"\nstudio -> street transfer from {args.base}, test accuracy over seeds {args.seeds} "
          f"(mean +- standard error, range); LoRA lr {args.lora_lr}, full lr {args.full_lr}")
    for arm, values in accuracy.items():
        time_note = f", training {statistics.median(seconds[arm]):.0f} s median" if arm in seconds else ""
        print(f"  {arm:<6} {spread(summarise([{'accuracy': v} for v in values])['accuracy'], '+-')}{time_note}")
    gaps = [f - lo for f, lo in zip(accuracy["full"], accuracy["lora"])]
    print(f"  full - LoRA, paired by seed: {paired(gaps)}")
    return accuracy


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    c = commands.add_parser("cost")
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--steps", type=int, default=3)
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--tiny", action="store_true", help="a tiny ViT: the code path, not the figures")
    s = commands.add_parser("_step")
    s.add_argument("mode", choices=["full", "lora"])
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--tiny", action="store_true")
    t = commands.add_parser("transfer")
    t.add_argument("--base", default="outputs/quickstart")
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    t.add_argument("--lora-lr", type=float, default=5e-3)
    t.add_argument("--full-lr", type=float, default=1e-3)
    t.add_argument("--work", default="outputs/bench-lora")
    t.add_argument("overrides", nargs="*", help="config overrides for both arms, e.g. training.num_train_epochs=1")
    args = parser.parse_args(argv)
    if args.command == "_step":
        print(json.dumps(step_child(args.mode, args.batch, args.steps, args.tiny)))
    elif args.command == "cost":
        cost(args)
    else:
        transfer(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
