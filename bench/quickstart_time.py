"""Wall-clock time and test accuracy of the quickstart configs, each run as a user runs it.

    python bench/quickstart_time.py [--output bench/results/quickstart.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ["quickstart", "quickstart-beit"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "bench" / "results" / "quickstart.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in CONFIGS:
            out = Path(tmp) / name
            start = time.perf_counter()
            subprocess.run([sys.executable, "train.py", f"configs/{name}.yaml", f"training.output_dir={out}"],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds = time.perf_counter() - start
            results = json.loads((out / "all_results.json").read_text())
            rows.append({"config": name, "wall_seconds": round(seconds, 1), "cores": os.cpu_count(),
                         "train_runtime": results["train_runtime"], "test_accuracy": results["test_accuracy"],
                         "eval_accuracy": results["eval_accuracy"]})
    print(f"{'config':<18}{'wall s':>8}{'train s':>9}{'eval acc':>10}{'test acc':>10}")
    for r in rows:
        print(f"{r['config']:<18}{r['wall_seconds']:>8}{r['train_runtime']:>9.1f}{r['eval_accuracy']:>10.4f}"
              f"{r['test_accuracy']:>10.4f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
