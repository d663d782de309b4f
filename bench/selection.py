"""`python -m facemask select`'s scoring pass in images/s, PyTorch against the exported ONNX graph, on
the same pool: each file read for its digest, decoded, hashed (phash) and scored; what select.json
reports as images_per_s.

    .venv/bin/python bench/selection.py                          # drawn faces, the ViT-B/16 (224 px)
    .venv/bin/python bench/selection.py --models tiny vit-base --photos ../shared/data/fm12k-dev/validation

Models: random-init classifiers saved as run folders and exported (bench/detect.py's run_folder;
speed does not depend on the weights), with an empty run_images.csv (nothing of the pool is theirs).
Pools: the drawn set written by `synth` (--images, 128 px), and with --photos real photos read in
place (never copied). The backends take turns within each repeat (margin: probabilities only;
clusters: the embeddings too); printed: the median images/s and the range over --repeats.
Named selection.py: a bench/select.py would hide the standard library's select module here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))


def rate(run: Path, pool: Path, backend: str, strategy: str, out: Path) -> float:
    from facemask.__main__ import main as cli
    from facemask.run_folder import SELECT_JSON

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli(["select", str(run), str(pool), "--budget", "10", "--strategy", strategy, "--backend", backend,
                    "--output", str(out), "--force"])
    if code:
        raise SystemExit(f"select {run} {pool} --backend {backend} failed with exit code {code}")
    return json.loads((out / SELECT_JSON).read_text())["images_per_s"]


def main(argv: List[str] | None = None) -> Dict[str, Dict]:
    from common import median_range, write_json
    from detect import run_folder

    from facemask.__main__ import main as cli
    from facemask.run_folder import RUN_IMAGES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit-base"], choices=["tiny", "vit-base"])
    parser.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx", "onnx-int8"])
    parser.add_argument("--strategies", nargs="+", default=["margin", "clusters"])
    parser.add_argument("--images", type=int, default=200, help="drawn pool images")
    parser.add_argument("--photos", type=Path, help="a folder of real photos, read in place")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    figures: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pools = {"drawn": work / "drawn"}
        with contextlib.redirect_stdout(io.StringIO()):
            cli(["synth", str(pools["drawn"]), "--num-images", str(args.images), "--image-size", "128"])
        if args.photos is not None and args.photos.is_dir():
            pools["photos"] = args.photos
        for name in args.models:
            run = run_folder(name, work)
            RUN_IMAGES.path(run).write_text("split,sha256\n", encoding="utf-8")
            for pool_name, pool in pools.items():
                for strategy in args.strategies:
                    rates: Dict[str, List[float]] = {b: [] for b in args.backends}
                    for backend in args.backends:  # once untimed: the files in the page cache, the graph loaded once
                        rate(run, pool, backend, strategy, work / "out")
                    for _ in range(args.repeats):
                        for backend in args.backends:
                            rates[backend].append(rate(run, pool, backend, strategy, work / "out"))
                    key = f"{name} {pool_name} {strategy}"
                    figures[key] = rates
                    print(f"{key:32s} " + "  ".join(f"{b}: {median_range(r, 1)} images/s" for b, r in rates.items()),
                          flush=True)
    if args.output:
        write_json(args.output, figures)
    return figures


if __name__ == "__main__":
    main()
