"""The torch-free runtime's footprint: the install size of an environment made from
requirements-serve.txt, and the cold start of classifying one image (the whole
`python -m facemask predict RUN img.jpg --backend onnx` process) there, beside the training
environment's torch and onnx backends.

    .venv/bin/python bench/runtime.py                      # makes the environment in a temporary folder
    .venv/bin/python bench/runtime.py --venv /tmp/serve    # an environment made before (python3 -m venv
                                                           # /tmp/serve && /tmp/serve/bin/pip install -r
                                                           # requirements-serve.txt)

Models: random-init classifiers saved as run folders and exported to ONNX (bench/detect.py's
run_folder): the tiny test ViT and ViT-B/16 (224 px, a 330 MB graph); speed does not depend on the
weights. Each command runs once untimed (the files in the page cache, as on a machine that has run it
before), then --repeats times; printed: the median wall time and the range. Size: the bytes the
environment's files take on disk (du).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))


def disk_bytes(folder: Path) -> int:
    """What `du` counts: allocated blocks of every file, each hard link once."""
    seen, total = set(), 0
    for root, _, files in os.walk(folder):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


def make_venv(folder: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                    str(REPO / "requirements-serve.txt")], check=True)
    return folder


def cold_starts(python: Path, args: List[str], repeats: int, cwd: Path) -> List[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    times = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        done = subprocess.run([str(python), "-m", "facemask", *args], cwd=cwd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"{python} -m facemask {' '.join(args)} failed:\n{done.stderr[-2000:]}")
        if attempt:  # the first run only fills the page cache
            times.append(elapsed)
    return times


def main(argv: List[str] | None = None) -> Dict[str, Dict]:
    from detect import run_folder
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, help="an environment made from requirements-serve.txt (default: make one)")
    parser.add_argument("--models", nargs="+", default=["tiny", "vit-base"], choices=["tiny", "vit-base"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    results: Dict[str, Dict] = {"cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="facemask-runtime-bench-") as work:
        work_dir = Path(work)
        venv = args.venv or make_venv(work_dir / "serve-venv")
        results["install_bytes"] = {"requirements-serve.txt": disk_bytes(venv),
                                    "requirements.txt (this interpreter's environment)": disk_bytes(Path(sys.prefix))}
        for label, size in results["install_bytes"].items():
            print(f"install size, {label}: {size / 2**20:.0f} MiB")
        image = work_dir / "img.jpg"
        Image.new("RGB", (640, 480), (120, 130, 140)).save(image)
        arms = [("serve env, --backend onnx", venv / "bin" / "python", "onnx"),
                ("training env, --backend onnx", Path(sys.executable), "onnx"),
                ("training env, --backend torch", Path(sys.executable), "torch")]
        results["cold_start_s"] = {}
        for name in args.models:
            folder = run_folder(name, work_dir)
            for arm, python, backend in arms:
                times = cold_starts(python, ["predict", str(folder), str(image), "--backend", backend], args.repeats,
                                    work_dir)
                key = f"{'tiny ViT' if name == 'tiny' else 'ViT-B/16'}, {arm}"
                results["cold_start_s"][key] = {"median": statistics.median(times), "min": min(times),
                                                "max": max(times), "runs": len(times)}
                print(f"cold start of one image, {key}: {statistics.median(times):.2f} s "
                      f"({min(times):.2f}-{max(times):.2f}, {len(times)} runs, {os.cpu_count()} cores)", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
