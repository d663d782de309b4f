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
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from facemask import PACKAGE
from facemask.config.dump import redact
from facemask.config.schema import ConfigError
from facemask.processes import keep_from_children, pid_alive, release_to_children, started_at
from facemask.run_folder import CHECKPOINTS, EXPERIMENT, LOCK, RESULTS, RUN_MARKERS, STATE

logger = logging.getLogger("facemask")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """A run's command line (train.py, pretrain.py): CONFIG, overrides, --resume, --overwrite, --force."""
    parser.add_argument("config", help="experiment YAML file, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=3e-5")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue the run in training.output_dir from its latest checkpoint, or from CHECKPOINT")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what training.output_dir holds and start the run over")
    add_force_argument(parser)


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
    package's own folder (in a checkout or where it is installed), the home folder or a folder
    holding any of them."""
    target = output_dir.expanduser().resolve()
    protected = {"the current directory": Path.cwd().resolve(), "the home folder": Path.home().resolve(),
                 "the facemask package's folder": PACKAGE}
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


# The heartbeat: while a run holds its folder, a background thread touches run.lock (its mtime)
# every HEARTBEAT_S seconds. A record of another host, whose processes cannot be seen from here and
# whose flock may be local to its node, is over once its heartbeat is STALE_BEATS intervals old
# (2 minutes) and did not move during WATCH_BEATS intervals of watching: the watch, not the clocks,
# tells a live run (two nodes' clocks, or a file server's, may disagree by seconds).
HEARTBEAT_S = 10.0
STALE_BEATS = 12
WATCH_BEATS = 3
FORCE_HELP = ("take the run folder's lock from a run on another host at once, without waiting for its heartbeat "
              "to go stale (a run of this host that still runs is never taken over)")


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    """--force, the one way past RunLock's heartbeat wait (train.py, pretrain, repeat, label-issues)."""
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


class RunLock:
    """The lock a run holds on its output folder while it writes (run_folder.LOCK: host, PID, the
    PID's start time, the command, the heartbeat interval). A second run into a locked folder stops
    with a message naming the first. Only a distributed run's main process takes it.

    The file is locked with flock, which the kernel releases when the last descriptor of the open
    file goes. Forked workers (the drawing pool, the cache build, DataLoader workers) would inherit
    that descriptor and keep the folder locked after a SIGKILL of the run: each child closes it at
    once (facemask/processes.py `keep_from_children`); the heartbeat thread does not exist in a child at all.

    A taken flock proves nothing about another host: on BeeGFS, Lustre with `localflock` or NFS
    with `nolock` it is local to each node. So the record decides, the same way whether the flock
    was taken or the file system has none. A record of this host is over when its PID no longer
    runs (or now belongs to a process started later); one of another host when its heartbeat is
    stale (see HEARTBEAT_S), or at once with `force`. Taking one over is warned about by name; the
    run it named, if it still runs, finds at its next heartbeat that the record is not its own and
    stops (SIGTERM) instead of writing into a folder that is no longer its."""

    def __init__(self, output_dir: Path, force: bool = False) -> None:
        self.path = LOCK.path(output_dir)
        self.force = force
        self._fd: Optional[int] = None
        self._owner: Optional[int] = None
        self._heartbeat: Optional[_Heartbeat] = None
        self._made_folder = False

    def acquire(self) -> "RunLock":
        self._made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._open_flocked()
            holder = _read_lock(fd)
            if not holder or _is_this_process(holder):
                break
            try:
                self._judge(fd, holder)
                break
            except _Moved:
                os.close(fd)  # the holder ended and removed the file while this run watched it: again
            except ConfigError as err:
                os.close(fd)
                raise self._refuse(err) from None
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": started_at(os.getpid()),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": redact(" ".join(sys.argv)), "heartbeat_s": HEARTBEAT_S}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode(), 0)
        self._fd, self._owner = fd, os.getpid()
        keep_from_children(fd)
        self._heartbeat = _Heartbeat(fd, self.path, HEARTBEAT_S, mine)
        self._heartbeat.start()
        return self

    def _open_flocked(self) -> int:
        """The lock file, open and flocked (or on a file system without flock, open): a holder of
        the flock is refused here."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return fd  # a file system without flock: the record decides
                holder = _read_lock(fd)
                os.close(fd)
                raise self._refuse(self._in_use(holder)) from None
            if _same_file(self.path, fd):
                return fd  # not a file the previous holder removed while this one opened it
            os.close(fd)

    def _judge(self, fd: int, holder: Dict[str, Any]) -> None:
        """Returns when `holder`'s record may be taken over (warned about); ConfigError when not."""
        if holder.get("host") == socket.gethostname():
            state = _process_state(holder)
            if state == "running":
                raise ConfigError(
                    f"{self.path.parent} is in use by another run of this host ({_describe(holder)}), which still "
                    f"runs: wait for it to end or end it, or choose another training.output_dir. If process "
                    f"{holder.get('pid')} is not that run, delete {self.path}")
            logger.warning("taking over %s: the run that wrote it is over (process %s of this host %s; %s)",
                           self.path, holder.get("pid"), state, _describe(holder))
            return
        if "heartbeat_s" not in holder and not self.force:
            # Written by a version without a heartbeat: its mtime never moves, live or not.
            raise ConfigError(
                f"{self.path.parent} is locked by a run on host {holder.get('host')} ({_describe(holder)}) whose "
                f"record has no heartbeat (an earlier version of this project), so whether it still runs cannot be "
                f"told from here: if it is over, pass --force to take the folder over, or delete {self.path}")
        interval = _interval(holder)
        if self.force:
            logger.warning("--force: taking over %s from a run on host %s (%s; heartbeat %s). If that run still "
                           "runs, it stops at its next heartbeat", self.path, holder.get("host"),
                           _describe(holder), _age(self.path))
            return
        age = self._watch(fd, holder, interval)
        logger.warning("taking over %s: the run on host %s (%s) has not refreshed its heartbeat for %.0f s (a run "
                       "refreshes it every %g s; after %g s it is over)", self.path, holder.get("host"),
                       _describe(holder), age, interval, STALE_BEATS * interval)

    def _watch(self, fd: int, holder: Dict[str, Any], interval: float) -> float:
        """Another host's heartbeat, watched until it moves (ConfigError: that run is alive) or has
        been stale for STALE_BEATS intervals and still for WATCH_BEATS of watching; its age then."""
        first = os.fstat(fd).st_mtime_ns
        stale, until = STALE_BEATS * interval, time.monotonic() + WATCH_BEATS * interval
        wait = max(until - time.monotonic(), first / 1e9 + stale - time.time())
        if wait > 1:
            logger.info("%s names a run on host %s (%s): watching its heartbeat for up to %.0f s before taking the "
                        "folder over (--force: at once)", self.path, holder.get("host"), _describe(holder), wait)
        while True:
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                raise _Moved() from None
            if (now.st_dev, now.st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                raise _Moved()
            if now.st_mtime_ns != first:
                raise ConfigError(
                    f"{self.path.parent} is in use by a run on host {holder.get('host')} ({_describe(holder)}; its "
                    f"heartbeat, refreshed every {interval:g} s, moved {_age(self.path)}): wait for it to end, or "
                    f"choose another training.output_dir. If that run is over but its heartbeat still moves (a hung "
                    f"process), pass --force to take the folder over")
            age = time.time() - now.st_mtime_ns / 1e9
            if age >= stale and time.monotonic() >= until:
                return age
            time.sleep(min(1.0, interval / 4))

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
        if self._fd is None or self._owner != os.getpid():
            return  # not held, or a forked child's copy of the object: the lock is its parent's
        heartbeat, self._heartbeat = self._heartbeat, None
        heartbeat.stop()  # before the descriptor closes: it never touches a reused descriptor
        # A record taken over stays: it is the new holder's.
        if heartbeat.owns(_read_lock(self._fd)) and _same_file(self.path, self._fd):
            self.path.unlink(missing_ok=True)  # removed while still held: no other run can take it half-way
        release_to_children(self._fd)
        os.close(self._fd)
        self._fd = None
        if self._made_folder and not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()  # a run that stopped before writing anything leaves no folder behind

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


class _Moved(Exception):
    """The lock file was removed or replaced while a run watched it: open it again."""


class _Heartbeat:
    """The holder's heartbeat: a daemon thread that touches the lock file every `interval` seconds
    (one utime and one small read), and stops the run (SIGTERM) if the record became another's."""

    def __init__(self, fd: int, path: Path, interval: float, record: Dict[str, Any]) -> None:
        import threading

        self.fd, self.path, self.interval = fd, path, interval
        # Who wrote the record, as written: a host name changed since (or faked) is no takeover.
        self._me = (record["host"], record["pid"])
        self._touch: Any = fd if os.utime in os.supports_fd else path
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="facemask-run-lock-heartbeat", daemon=True)
        self._failing = False

    def owns(self, holder: Dict[str, Any]) -> bool:
        return (holder.get("host"), holder.get("pid")) == self._me

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.utime(self._touch)
                self._failing = False
            except OSError as err:
                if not self._failing:  # once per outage, not every interval
                    logger.warning("could not refresh the heartbeat of %s (%s): another host may take the folder "
                                   "over after %g s without one", self.path, err, STALE_BEATS * self.interval)
                self._failing = True
            holder = _read_lock(self.fd)
            if holder and not self.owns(holder):
                logger.error("%s was taken over by %s: this run no longer owns %s and stops (SIGTERM) rather than "
                             "write into another run's folder", self.path, _describe(holder), self.path.parent)
                os.kill(os.getpid(), signal.SIGTERM)
                return


def _is_this_process(holder: Dict[str, Any]) -> bool:
    return (holder.get("host"), holder.get("pid")) == (socket.gethostname(), os.getpid())


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _process_state(holder: Dict[str, Any]) -> str:
    """Whether the run a record of this host names still runs: 'running', 'is no longer running' or
    'whose PID now belongs to another process'. A record without its PID's start time (an earlier
    version's) counts as running while the PID does."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        return "is no longer running"
    recorded = holder.get("pid_start")
    if isinstance(recorded, int) and started_at(pid) not in (None, recorded):
        return "whose PID now belongs to another process"
    return "running"


def _interval(holder: Dict[str, Any]) -> float:
    """The heartbeat interval the holder recorded (an earlier version's record: this version's)."""
    found = holder.get("heartbeat_s")
    return float(found) if isinstance(found, (int, float)) and found > 0 else HEARTBEAT_S


def _age(path: Path) -> str:
    try:
        return f"{max(0.0, time.time() - os.stat(path).st_mtime):.0f} s ago"
    except OSError:
        return "unknown"


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

