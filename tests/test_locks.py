"""A run's lock on its folder outlives nothing: a run killed with SIGKILL while its forked workers
draw images or build the preprocessing cache leaves the folder free for the next run (the workers
neither hold the lock nor outlive the run), and SIGTERM stops a run cleanly. A run on another host
keeps its folder while its heartbeat moves, even where the flock is node-local; a stale one is
taken over, --force takes a live one (which then stops), and a live process of this host is never
taken over. Real processes, real signals."""

import json
import logging
import os
import re
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


# Two hosts sharing one folder. The holder is a real process whose host name is faked; the run in
# this process plays the other node, where the flock is node-local (BeeGFS, Lustre `localflock`,
# NFS `nolock`): it is always granted, whoever holds it on the first node.
BEAT = 0.2  # the holder's heartbeat interval: stale after resume.STALE_BEATS of them


def _holder(out: Path, host: str = "", fork: bool = False) -> subprocess.Popen:
    """A process holding `out`'s lock on `host` (this host where empty), refreshing its heartbeat
    every BEAT seconds until killed, or until its record is taken over (then it stops, exit 143).
    With `fork`, it forks a child that sleeps on after it, as a killed run's worker may."""
    proc = subprocess.Popen([sys.executable, "-c", (
        "import os, socket, sys, time\n"
        "sys.path.insert(0, '.')\n"
        + (f"socket.gethostname = lambda: {host!r}\n" if host else "")
        + "from pathlib import Path\n"
        "from facemask.training import resume\n"
        f"resume.HEARTBEAT_S = {BEAT}\n"
        "with resume.stop_on_sigterm(), resume.RunLock(Path(" + repr(str(out)) + ")):\n"
        + ("    child = os.fork()\n    if child == 0:\n        time.sleep(60)\n        os._exit(0)\n"
           "    print(child, flush=True)\n" if fork else "")
        + "    print('held', flush=True)\n"
        "    time.sleep(120)\n")], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline().strip() for _ in range(2 if fork else 1)]
    assert lines[-1] == "held", proc.stderr.read()
    proc.child = int(lines[0]) if fork else None
    return proc


def _node_local_flock(monkeypatch) -> None:
    from facemask.training import resume

    monkeypatch.setattr(resume.fcntl, "flock", lambda fd, op: None)


def _end(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_a_live_run_on_another_host_keeps_its_folder_and_checkpoints(tmp_path, monkeypatch):
    out = tmp_path / "out"
    holder = _holder(out, "node-1")
    try:
        (out / "checkpoint-5").mkdir()
        (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
        _node_local_flock(monkeypatch)
        with pytest.raises(ConfigError) as refused:
            train.main([str(tiny_config(tmp_path)), "--overwrite"])
        message = str(refused.value)
        assert f"in use by a run on host node-1 (process {holder.pid} on node-1, started" in message
        assert f"heartbeat, refreshed every {BEAT:g} s, moved" in message and "pass --force" in message
        assert (out / "checkpoint-5" / "trainer_state.json").is_file()  # not cleared by --overwrite
        assert json.loads((out / "run.lock").read_text())["pid"] == holder.pid
        assert holder.poll() is None
    finally:
        _end(holder)


def test_a_stale_heartbeat_of_another_host_is_taken_over_with_a_warning(tmp_path, monkeypatch, caplog):
    from facemask.training import resume

    out = tmp_path / "out"
    holder = _holder(out, "node-1")
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "trainer_state.json").write_text("{}")
    holder.kill()  # a node lost, a SIGKILL: its heartbeat stops, its record stays
    holder.wait()
    killed = time.monotonic()
    _node_local_flock(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="facemask"):
        train.main([str(tiny_config(tmp_path)), "--overwrite"])
    stale = resume.STALE_BEATS * BEAT
    taken = [r.getMessage() for r in caplog.records if r.getMessage().startswith("taking over")]
    assert len(taken) == 1, caplog.text
    assert f"the run on host node-1 (process {holder.pid} on node-1" in taken[0]
    age = float(taken[0].split("has not refreshed its heartbeat for ")[1].split(" s")[0])
    assert age >= stale - 0.5 and f"after {stale:g} s it is over" in taken[0]
    assert time.monotonic() - killed >= stale - BEAT  # it waited for the heartbeat to go stale
    assert (out / "train_results.json").is_file() and not (out / "checkpoint-5").exists()
    assert not (out / "run.lock").exists()


def test_force_takes_a_live_run_over_and_that_run_stops(tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    holder = _holder(out, "node-1")
    try:
        _node_local_flock(monkeypatch)
        with caplog.at_level(logging.WARNING, logger="facemask"):
            train.main([str(tiny_config(tmp_path)), "--overwrite", "--force"])
        assert f"--force: taking over {out / 'run.lock'} from a run on host node-1 (process {holder.pid}" in caplog.text
        # The run taken over sees the record is no longer its own at its next heartbeat, and stops
        # cleanly, leaving the record of the run that took the folder.
        assert holder.wait(timeout=30) == 143
        log = holder.stderr.read()
        assert f"was taken over by process {os.getpid()} on {socket.gethostname()}" in log and "stops" in log
        assert (out / "train_results.json").is_file() and not (out / "run.lock").exists()
    finally:
        _end(holder)


def test_a_live_process_of_this_host_is_never_taken_over(tmp_path, monkeypatch):
    # Here too the flock is granted (as where it is node-local, or a file system without flock):
    # the record's PID, still running with its recorded start time, keeps the folder; --force too.
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        _node_local_flock(monkeypatch)
        for force in ([], ["--force"]):
            with pytest.raises(ConfigError, match=rf"in use by another run of this host \(process {holder.pid} on "
                                                  rf"{re.escape(socket.gethostname())}, .*\), which still runs: wait"):
                train.main([str(tiny_config(tmp_path)), "--overwrite", *force])
        assert json.loads((out / "run.lock").read_text())["pid"] == holder.pid and holder.poll() is None
    finally:
        _end(holder)


def test_the_heartbeat_beats_while_held_stops_at_release_and_dies_with_the_run(tmp_path, monkeypatch):
    import threading

    from facemask.training import resume

    monkeypatch.setattr(resume, "HEARTBEAT_S", 0.05)
    lock = RunLock(tmp_path / "a").acquire()
    first = os.stat(lock.path).st_mtime_ns
    time.sleep(0.3)
    assert os.stat(lock.path).st_mtime_ns > first
    lock.release()
    assert not [t for t in threading.enumerate() if "heartbeat" in t.name]
    # A run killed while a forked child lives on: the child neither holds the lock nor beats.
    holder = _holder(tmp_path / "b", "node-1", fork=True)
    try:
        record = tmp_path / "b" / "run.lock"
        beat = os.stat(record).st_mtime_ns
        time.sleep(3 * BEAT)
        assert os.stat(record).st_mtime_ns > beat
        holder.kill()
        holder.wait()
        beat = os.stat(record).st_mtime_ns
        time.sleep(5 * BEAT)
        assert _running(holder.child) and os.stat(record).st_mtime_ns == beat
        assert not _holds(holder.child, record)
    finally:
        _end(holder)
        if holder.child and _running(holder.child):
            os.kill(holder.child, signal.SIGKILL)


def test_repeat_hands_force_to_each_run(tmp_path, monkeypatch):
    from facemask.__main__ import main
    from facemask.training import repeat

    commands = []
    monkeypatch.setattr(repeat.subprocess, "run",
                        lambda command: commands.append(command) or subprocess.CompletedProcess(command, 1))
    assert main(["repeat", str(tiny_config(tmp_path)), "--seeds", "0", "--force"]) == 1  # the run "failed"
    assert commands and commands[0][-1] == "--force"
