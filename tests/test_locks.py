"""A run's lock on its folder outlives nothing: a run killed with SIGKILL while its forked workers
draw images or build the preprocessing cache leaves the folder free for the next run (the workers
neither hold the lock nor outlive the run), and SIGTERM stops a run cleanly. Real processes, real
signals."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, tiny_config

import train
from facemask.config.schema import ConfigError
from facemask.training.resume import RunLock


def _children(pid: int) -> list:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its entry waits for a reaper


def _holds(pid: int, path: Path) -> bool:
    target = os.stat(path)
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        try:
            st = os.stat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def _start(config: Path, log: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "train.py", str(config), *overrides], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _kill_with_workers_and_take_the_folder(proc: subprocess.Popen, out: Path, log: Path, phase: str,
                                           children: int = 2) -> None:
    lock = out / "run.lock"
    _wait(lambda: lock.exists() and len(_children(proc.pid)) >= children, 180, f"the workers of the {phase}", proc,
          log)
    workers = _children(proc.pid)
    assert not [w for w in workers if _holds(w, lock)], f"{phase} workers hold {lock}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # At once, whatever the workers do: the folder is free, and the dead run's record is named.
    with RunLock(out):
        pass
    end = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < end:
        time.sleep(0.05)
    assert not [w for w in workers if _running(w)], f"{phase} workers outlived the killed run"


def test_sigkill_while_drawing_leaves_no_worker_and_no_lock(tmp_path):
    config = tiny_config(tmp_path, data={"synthetic": True, "synthetic_num_images": 60000,
                                         "synthetic_image_size": 48, "preprocess_dir": str(tmp_path / "cache")})
    _kill_with_workers_and_take_the_folder(_start(config, tmp_path / "log"), tmp_path / "out", tmp_path / "log",
                                           "drawing pool")


@pytest.mark.slow
def test_sigkill_while_caching_leaves_no_worker_and_no_lock(tmp_path):
    from facemask.__main__ import main

    folder = tmp_path / "images"
    assert main(["synth", str(folder), "--num-images", "3000", "--image-size", "160", "--seed", "1"]) == 0
    config = tiny_config(tmp_path, data={"train_dir": str(folder), "audit": False, "preprocess_num_proc": 2,
                                         "preprocess_dir": str(tmp_path / "cache")},
                         model={"from_config": {"model_type": "vit", "image_size": 128, "patch_size": 32,
                                                "hidden_size": 32, "num_hidden_layers": 1,
                                                "num_attention_heads": 2, "intermediate_size": 32}})
    log = tmp_path / "log"
    proc = _start(config, log)
    # The build's own processes: the cache folder's staging copy exists while they decode. Three: the
    # two workers datasets forks, and the Manager server that relays their batches, which offers no
    # initializer and would otherwise serve on forever (CI once caught it).
    _wait(lambda: any((tmp_path / "cache").glob(".*.partial")), 180, "the cache build", proc, log)
    _kill_with_workers_and_take_the_folder(proc, tmp_path / "out", log, "cache build", children=3)


@pytest.mark.parametrize("recorded", ["dead", "reused"])
def test_a_lock_held_by_what_a_dead_run_left_names_them_not_the_dead_run(tmp_path, recorded):
    out = tmp_path / "out"
    out.mkdir()
    # The run the record names is gone; its PID may since belong to an unrelated live process.
    dead = str(os.getppid()) if recorded == "reused" else subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    state = "whose PID now belongs to another process" if recorded == "reused" else "which is no longer running"
    record = {"host": socket.gethostname(), "pid": int(dead), "started": "2026-12-01T10:00:00+00:00",
              "command": "train.py killed.yaml"}
    # What an earlier version's orphaned worker did: hold the flock of a run that is gone.
    orphan = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(out / 'run.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        f"os.write(fd, {json.dumps(record).encode()!r})\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert orphan.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as refused:
            train.main([str(tiny_config(tmp_path)), "--overwrite"])
        message = str(refused.value)
        assert f"not by the run its lock file names (process {dead}, {state})" in message
        assert f"PIDs: {orphan.pid}" in message and "in use by another run" not in message
    finally:
        orphan.kill()
        orphan.wait()


@pytest.mark.slow
def test_sigterm_stops_a_run_unlocked_with_its_checkpoints(tmp_path):
    config = tiny_config(tmp_path, training={"max_steps": 100000, "save_strategy": "steps", "save_steps": 5,
                                             "save_total_limit": 2})
    log = tmp_path / "log"
    out = tmp_path / "out"
    proc = _start(config, log)
    _wait(lambda: any((p / "trainer_state.json").is_file() for p in out.glob("checkpoint-*")), 240,
          "a first checkpoint", proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert not (out / "run.lock").exists()
    assert "stopped by SIGTERM" in log.read_text()
    complete = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    assert complete
    # The next run resumes from what is kept (one step more, then done).
    step = max(int(p.name.split("-")[1]) for p in complete)
    results = train.main([str(config), "--resume", f"training.max_steps={step + 1}"])
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == step + 1
    assert results["train"]
