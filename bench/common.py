"""What the benchmark scripts share: a command run with its CPU and wall time recorded (and not
run again once recorded), a function's wall time, rates of functions that take turns, a training
run's results, the figures' formats (a mean with its spread, a median with its range) and the JSON
they are written to."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

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


def spread(s: Dict[str, Any], sign: str = "±") -> str:
    """A summary (training/repeat.py's summarise) as 'mean ± standard error (min-max)'."""
    se = f"{s['se']:.4f}" if s.get("se") is not None else "n/a"
    return f"{s['mean']:.4f} {sign} {se} ({s['min']:.4f}-{s['max']:.4f})"


def paired(differences: Sequence[float]) -> str:
    """Differences paired by seed: 'mean (range min to max)', signed."""
    return (f"{statistics.mean(differences):+.4f} (range {min(differences):+.4f} to "
            f"{max(differences):+.4f})")


def median_range(values: Sequence[float], digits: int = 1, width: int = 0, suffix: str = "",
                 one_alone: bool = False) -> str:
    """'median (min-max)' over the repeats, the median right-aligned in `width`; with `one_alone`,
    a single value is printed alone."""
    if one_alone and len(values) == 1:
        return f"{values[0]:>{width}.{digits}f}{suffix}"
    return f"{statistics.median(values):>{width}.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f}){suffix}"


def clocked(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def interleaved_rates(calls: Dict[str, Callable[[], Any]], repeats: int, iters: int,
                      items: int = 1) -> Dict[str, List[float]]:
    """Items/s of each call (`items` per call), per repeat; the calls take turns within each repeat,
    so a slow spell of a noisy machine hits them alike."""
    rates: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(iters):
                call()
            rates[name].append(items * iters / (time.perf_counter() - start))
    return rates


def trained_results(config: str, overrides: List[str], folder: Path) -> Dict[str, Any]:
    """A train.py run of `config` into `folder` (not run again once its test results exist): its
    test results, with the training's train_runtime."""
    from facemask.run_folder import RESULTS

    if not RESULTS.path(folder, "test").is_file():
        subprocess.run([sys.executable, "train.py", config, f"training.output_dir={folder}", *overrides, "--overwrite"],
                       cwd=REPO, check=True, capture_output=True, text=True)
    result = json.loads(RESULTS.path(folder, "test").read_text())
    result["train_runtime"] = json.loads(RESULTS.path(folder, "train").read_text())["train_runtime"]
    return result


def run_accuracy(folder: Path, prefix: str = "test") -> float:
    """A finished run's accuracy on a split, from its results file."""
    from facemask.run_folder import RESULTS

    return json.loads(RESULTS.path(folder, prefix).read_text())[f"{prefix}_accuracy"]


def write_json(path: str | Path, value: Any) -> None:
    """A benchmark's figures as JSON (its folder made)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
