"""The lives of this process's children: a forked worker dies with the process that forked it
(PDEATHSIG), keeps none of the run locks' descriptors, and a PID of this host can be asked whether
it still runs (and since when). The lowest layer: the data preparation's pools, the cache build and
the run folder's lock all fork, and each at-fork hook is registered once, here, for all of them.

Standard library only: the torch-free runtime can import the package without anything else.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Set


def die_with_parent(parent: int) -> None:
    """Called first in a forked worker (a pool's initializer, or the first batch a worker maps): the
    kernel kills the worker when `parent`, the process that forked it, dies. A run killed with
    SIGKILL (out of memory, a cluster's hard limit) then leaves no workers behind that go on
    decoding, or hold what the run held. Linux only (prctl); elsewhere a no-op."""
    global _GUARDED
    if os.getpid() in (parent, _GUARDED):
        return  # not a worker (a map run in the process itself), or guarded already
    _GUARDED = os.getpid()
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)  # the parent died before the line above: the kernel will not signal


_GUARDED: Optional[int] = None
_FORKS_DIE_WITH: Optional[int] = None


@contextmanager
def forks_die_with_this_process() -> Iterator[None]:
    """Every process forked in this block dies with this one, from its first instruction: for
    libraries that fork without an initializer to call (datasets' `map(num_proc=...)` forks its
    pool's workers and a Manager server that would otherwise serve on forever, idle workers too)."""
    global _FORKS_DIE_WITH
    previous, _FORKS_DIE_WITH = _FORKS_DIE_WITH, os.getpid()
    try:
        yield
    finally:
        _FORKS_DIE_WITH = previous


_HELD: Set[int] = set()  # descriptors no child may keep: the run locks this process holds


def keep_from_children(fd: int) -> None:
    """A descriptor every child forked from now on closes at once. The run folder's lock is an
    flock, which the kernel releases when the last descriptor of the open file goes: a worker that
    a SIGKILL of the run left alive must not keep the folder locked."""
    _HELD.add(fd)


def release_to_children(fd: int) -> None:
    """The descriptor is no longer held (called before it is closed)."""
    _HELD.discard(fd)


def _in_child() -> None:
    """After a fork, in the child: the held descriptors closed first (a few system calls, so the
    child holds the run's lock for as short a time as can be), then the guard of
    `forks_die_with_this_process` (it loads libc). The run lock's heartbeat thread is not copied
    into a child: a killed run's heartbeat stops with it."""
    global _FORKS_DIE_WITH
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()
    parent, _FORKS_DIE_WITH = _FORKS_DIE_WITH, None  # the child's own forks are its own concern
    if parent is not None:
        die_with_parent(parent)


os.register_at_fork(after_in_child=_in_child)


def pid_alive(pid: int) -> bool:
    """Whether a process of this host with that PID is running (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def started_at(pid: int) -> Optional[int]:
    """When a process of this host started (clock ticks since boot, /proc/PID/stat's 22nd field): a
    PID and this tell a process from a later one given the same PID. None where not readable."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
