"""Run-folder policy: what --resume continues, what --overwrite may delete, and the command line."""

from __future__ import annotations

import argparse
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

from facemask import REPO
from facemask.config.schema import ConfigError
from facemask.data.storage import pid_alive
from facemask.run_folder import CHECKPOINTS, EXPERIMENT, LOCK, RESULTS, RUN_MARKERS, STATE

logger = logging.getLogger("facemask")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """A run's command line (train.py, pretrain.py): CONFIG, overrides, --resume, --overwrite."""
    parser.add_argument("config", help="experiment YAML file, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=3e-5")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue the run in training.output_dir from its latest checkpoint, or from CHECKPOINT")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what training.output_dir holds and start the run over")


def parse_args(argv: Optional[List[str]], description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    # Options and overrides in any order: `CONFIG --overwrite training.x=1` as well as the other way.
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_intermixed_args(argv)
    # `--resume section.key=value` would take the override as a checkpoint path: give it back, in
    # its place on the command line (a later override wins over an earlier one).
    if args.resume and "=" in args.config and Path(args.resume).suffix in (".yaml", ".yml"):
        # `--resume CONFIG key=value`: the option took the config as its checkpoint.
        args.config, args.overrides, args.resume = args.resume, [args.config, *args.overrides], "latest"
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        at = next(i for i, arg in enumerate(argv) if arg in (args.resume, f"--resume={args.resume}"))
        args.overrides.insert(sum(arg in args.overrides for arg in argv[:at]), args.resume)
        args.resume = "latest"
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    return args


def latest_checkpoint(output_dir: Path) -> Optional[str]:
    """The newest checkpoint that was written completely: a kill mid-save leaves one without its
    trainer_state.json (the Trainer's last write), which cannot be resumed from."""
    if not output_dir.is_dir():
        return None
    complete = [p for p in output_dir.glob(CHECKPOINTS.name) if STATE.path(p).is_file()
                and p.name.split("-")[-1].isdigit()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def previous_run(output_dir: Path) -> Optional[str]:
    """What an earlier run left in output_dir: 'finished', 'interrupted', or None for nothing."""
    if not output_dir.is_dir():
        return None
    if RESULTS.path(output_dir, "train").is_file():
        return "finished"
    if any(output_dir.glob(CHECKPOINTS.name)) or EXPERIMENT.path(output_dir).is_file():
        return "interrupted"
    return None


def resolve_resume(output_dir: Path, resume: Optional[str], overwrite: bool) -> Optional[str]:
    """The checkpoint to resume from, None to start afresh; refuses to silently reuse a run folder."""
    if resume == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"--resume: {output_dir} holds no complete checkpoint-* folder to resume from")
        return checkpoint
    if resume:
        if not STATE.path(Path(resume)).is_file():
            raise ConfigError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json)")
        return resume
    state = previous_run(output_dir)
    if state and not overwrite:
        raise ConfigError(
            f"{output_dir} already holds a {state} run. Pass --resume to continue it from its latest checkpoint "
            "(or --resume CHECKPOINT), or --overwrite to delete it and start over; or choose another "
            "training.output_dir"
        )
    return None


def overwrite_refusal(output_dir: Path) -> Optional[str]:
    """Why --overwrite must not delete `output_dir`, or None: only an empty folder or one that is
    recognisably a run's (it holds run files or checkpoints), never the working directory, the
    repository, the home folder or a folder holding any of them."""
    target = output_dir.expanduser().resolve()
    protected = {"the current directory": Path.cwd().resolve(), "the home folder": Path.home().resolve(),
                 "this repository": REPO}
    for name, place in protected.items():
        if target == place or target in place.parents:
            return f"--overwrite would delete {target}, which is {name} or holds it; choose a run's own output folder"
    if not target.is_dir() or not any(p.name != LOCK.name for p in target.iterdir()):
        return None
    if any((target / marker).is_file() for marker in RUN_MARKERS) or any(target.glob(CHECKPOINTS.name)):
        return None
    return (f"--overwrite: {target} holds files but no run's (no {', '.join(RUN_MARKERS[:3])}, checkpoint-*): "
            "it was not made by train.py, so it is left alone; choose another training.output_dir")


def clear_output_dir(output_dir: Path) -> None:
    """--overwrite: empty a run folder (see overwrite_refusal for what is never deleted)."""
    reason = overwrite_refusal(output_dir)
    if reason:
        raise ConfigError(reason)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in output_dir.iterdir():
        if path.name == LOCK.name:
            continue  # this run's own lock, held while it writes
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def claim_output_dir(output_dir: Path, resume: Optional[str], overwrite: bool, main_process: bool) -> Optional[str]:
    """train.py's use of the run folder: the checkpoint to resume from (None: a fresh run), after
    --overwrite emptied the folder. Every process checks, so none goes on alone; the main one deletes."""
    checkpoint = resolve_resume(output_dir, resume, overwrite)
    if overwrite:
        reason = overwrite_refusal(output_dir)
        if reason:
            raise ConfigError(reason)
        if main_process:
            clear_output_dir(output_dir)
    return checkpoint


class RunLock:
    """The lock a run holds on its output folder while it writes (run_folder.LOCK: host, PID and
    start time). A second run into a locked folder stops with a message naming the first. Only a
    distributed run's main process takes it.

    The file is locked with flock, which the kernel releases when the last descriptor of the open
    file goes. Forked workers (the drawing pool, the cache build, DataLoader workers) would inherit
    that descriptor and keep the folder locked after a SIGKILL of the run: each child closes it at
    once (`_forget_in_child`). Where the flock is taken, nobody holds the folder, so a record left
    behind (a SLURM job killed at its limit, on this host or another, or a PID since reused) is
    stale and taken over with a warning. On a file system without flock the record decides: a
    live process of this host, or any process of another host (which cannot be seen from here),
    keeps the folder."""

    def __init__(self, output_dir: Path) -> None:
        self.path = LOCK.path(output_dir)
        self._fd: Optional[int] = None
        self._made_folder = False

    def acquire(self) -> "RunLock":
        self._made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flocked = False
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    break  # a file system without flock: the content below decides
                holder = _read_lock(fd)
                os.close(fd)
                raise self._refuse(self._in_use(holder)) from None
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    flocked = True
                    break  # not a file the previous holder removed while this one opened it
            except FileNotFoundError:
                pass
            os.close(fd)
        holder = _read_lock(fd)
        if holder and (holder.get("host"), holder.get("pid")) != (socket.gethostname(), os.getpid()):
            if not flocked:
                if holder.get("host") != socket.gethostname():
                    os.close(fd)
                    raise self._refuse(ConfigError(
                        f"{self.path.parent} is locked by a run on host {holder.get('host')} ({_describe(holder)}) "
                        f"and this file system cannot tell whether it still runs; if that run is over, delete "
                        f"{self.path}"))
                if isinstance(holder.get("pid"), int) and pid_alive(holder["pid"]):
                    os.close(fd)
                    raise self._refuse(self._in_use(holder))
            logger.warning("taking over %s: nobody holds it, so the run that wrote it is over (%s)", self.path,
                           _describe(holder))
        mine = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        self._fd = fd
        _HELD.add(fd)
        return self

    def _refuse(self, err: ConfigError) -> ConfigError:
        self._made_folder = False
        return err

    def _in_use(self, holder: Dict[str, Any]) -> ConfigError:
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int):
            holders = _processes_holding(self.path)
            dead = not pid_alive(pid)
            if dead or (holders and pid not in holders):
                # Someone holds the flock, but not the recorded run (dead, or its PID reused by a process
                # that does not have the file open): processes it left behind (workers of a version
                # that let them inherit the lock), or a run whose record is lost.
                others = ", ".join(map(str, holders)) or "unknown (not visible to this user)"
                state = "which is no longer running" if dead else "whose PID now belongs to another process"
                return ConfigError(f"{self.path.parent} is locked, but not by the run its lock file names (process "
                                   f"{pid}, {state}): processes it left behind still hold {self.path} (PIDs: "
                                   f"{others}); end them, or choose another training.output_dir")
        return ConfigError(f"{self.path.parent} is in use by another run ({_describe(holder)}): wait for it to end, "
                           "or choose another training.output_dir")

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # removed while still held: no other run can take it half-way
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None
        if self._made_folder and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a run that stopped before writing anything leaves no folder behind

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


_HELD: Set[int] = set()  # descriptors of the run locks this process holds


def _forget_in_child() -> None:
    """After a fork, in the child: close the run locks' descriptors, so that only the run holds its
    folder; a child left alive by a killed run then keeps nothing locked."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _processes_holding(path: Path) -> List[int]:
    """PIDs of this host's processes with `path` open (as `fuser` lists them; Linux's /proc)."""
    try:
        target = os.stat(path)
    except OSError:
        return []
    found = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                st = os.stat(fd)
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    found.append(int(fd_dir.parent.name))
                    break
        except OSError:
            continue  # gone, or another user's
    return sorted(found)


class Terminated(SystemExit):
    """SIGTERM (a SLURM time limit, `docker stop`, a scheduler's pre-emption) as an exception: it
    unwinds the run like any error, so the lock is released, nothing half-written is renamed into
    place, and checkpoints already written stay to resume from."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM ends the run cleanly with exit status 143 (128 + SIGTERM)."""
    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked worker inherited the handler: it dies as it would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated(128 + signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a run started from a thread): SIGTERM keeps its meaning
        yield
        return
    try:
        yield
    except Terminated:
        logger.error("stopped by SIGTERM: the run folder is unlocked; its checkpoints are kept (continue with "
                     "--resume)")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_lock(fd: int) -> Dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (ValueError, OSError):
        return {}


def _describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return "no details recorded"
    return (f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command', '?')}")

