"""What the benchmark scripts share: a command run with its CPU and wall time recorded (and not
run again once recorded), and a mean with its spread."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parent.parent


def timed(name: str, command: List[str], folder: Path, done: bool) -> Dict[str, float]:
    """Runs `command` unless `done` and its times are recorded; its output goes to folder/NAME.log.
    Returns CPU (user + system of the children) and wall seconds, as measured when it ran."""
    steps_file = folder / "steps.json"
    steps = json.loads(steps_file.read_text()) if steps_file.is_file() else {}
    if done and name in steps:
        print(f"  {name}: finished before, reused ({steps[name]['cpu_s']:.0f} s CPU when it ran)", flush=True)
        return steps[name]
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with (folder / f"{name}.log").open("w") as log:
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if code:
        tail = (folder / f"{name}.log").read_text()[-3000:]
        raise SystemExit(f"{name} failed (exit {code}): {' '.join(command)}\n{tail}")
    steps[name] = {"cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), "wall_s": wall}
    steps_file.write_text(json.dumps(steps, indent=1))
    print(f"  {name}: {steps[name]['cpu_s']:.0f} s CPU, {wall:.0f} s wall", flush=True)
    return steps[name]


def spread(s: Dict[str, Any]) -> str:
    se = f"{s['se']:.4f}" if s.get("se") is not None else "n/a"
    return f"{s['mean']:.4f} ± {se} ({s['min']:.4f}-{s['max']:.4f})"
