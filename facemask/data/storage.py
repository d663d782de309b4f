"""Where kept data lives on disk: the cache root, unique temporary names for a write that ends in
a rename (and the clean-up of those a killed process left), discarding a damaged entry, and a
digest of a split's stored images.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

from facemask.config.schema import ConfigError
from facemask.processes import pid_alive

logger = logging.getLogger("facemask")

if TYPE_CHECKING:  # imported where used: the CLI's --help reaches this module through export's defaults
    import datasets
    import numpy as np


# An image's content digest as the audit records it (inspection.Inspection.sha256): the SHA-256 of
# its file's bytes, in lower-case hex. Exclude lists, corrections, the run's image record, select
# and the review page name images by it.
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file's bytes, read in blocks (a stray video costs no memory); OSError as open raises it."""
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def stored_images(ds: datasets.Dataset, image_column: str) -> Iterator[Any]:
    """The undecoded image column as Arrow struct arrays ({bytes, path}), in order, a chunk at a
    time: reading it never decodes, nor holds every image's bytes at once."""
    for table in ds.select_columns([image_column]).with_format("arrow").iter(batch_size=1000):
        yield from table.column(image_column).chunks


def image_digests(ds: datasets.Dataset, image_column: str) -> np.ndarray:
    """Each image's SHA-256, in order, as a (rows, 32) uint8 array: of its bytes, or for a file on
    disk of its path, size, modification time and inode change time. `cp -p`, `rsync -a` and
    archive extraction keep a file's size and mtime while its bytes change, but they cannot set the
    ctime. The one place image bytes are read for a digest: data preparation calls it once per
    split and carries the result (PreparedData.digests), which the audit, the preprocessing cache
    and run_info.json reuse."""
    import numpy as np

    found = []
    for chunk in stored_images(ds, image_column):
        contents, paths = chunk.field("bytes"), chunk.field("path")
        for i in range(len(chunk)):
            data = contents[i]
            if data.is_valid:
                found.append(hashlib.sha256(data.as_buffer()).digest())
            else:
                path = paths[i].as_py()
                stat = os.stat(path)
                found.append(hashlib.sha256(
                    f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}".encode()).digest())
    return np.frombuffer(b"".join(found), dtype=np.uint8).reshape(len(found), 32)


def combined_digest(digests: np.ndarray) -> str:
    """One digest of images in order, from their `image_digests` rows: a subset's digest needs no
    second read of its images."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(digests, dtype=np.uint8).tobytes()).hexdigest()


def images_digest(ds: datasets.Dataset, image_column: str) -> str:
    """A digest of the split's images in order (see `image_digests`)."""
    return combined_digest(image_digests(ds, image_column))


def unique_suffix() -> str:
    """A temporary name's suffix no other process makes, on this host or another one sharing the
    filesystem (PIDs repeat across nodes): <host>.<pid>.<8 hex digits>."""
    import secrets

    return f"{_host()}.{os.getpid()}.{secrets.token_hex(4)}"


def _host() -> str:
    """This host's name without dots, so a temporary name splits into its fields unambiguously
    (a host `gpu.node1` is never taken for `node1`)."""
    return socket.gethostname().replace(".", "-")


def partial_name(path: Path) -> Path:
    """The temporary name beside `path` that `staged` writes to and `remove` moves it aside to."""
    return path.with_name(f".{path.name}.{unique_suffix()}.partial")


def first_line(err: BaseException) -> str:
    """An error as one line for a message: its type and the first line of its text."""
    text = str(err)
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def cache_root(preprocess_dir: Optional[str] = None) -> Path:
    """The configured cache folder, else one beside datasets' own cache."""
    if preprocess_dir:
        return Path(preprocess_dir).expanduser()
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "facemask-preprocessed"


@contextmanager
def staged(final: Path, folder: bool = False) -> Iterator[Path]:
    """A temporary name beside `final` (`.<name>.<host>.<pid>.<hex>.partial`) to write to; it
    becomes `final` only when the block completes, so a crash or an error never leaves a
    half-written `final`, nor replaces a good one. The temporary file or folder is removed either way.
    What was written reaches the disk (fsync) before the rename, and the rename after it: a machine
    that crashes leaves the old entry or the new one, never a new name over blocks never written.

    Where another process finished the same folder first, its copy stands: the content is the same
    by construction (the name is a digest of it). A file replaces any earlier one at once.
    """
    staging = partial_name(final)
    try:
        if folder:
            staging.mkdir(parents=True)
        yield staging
        _sync(staging)
        try:
            os.replace(staging, final)
        except OSError:
            if not (folder and final.is_dir()):
                raise
        _fsync(final.parent, _FOLDER)  # the rename itself
    finally:
        _delete(staging)


_FOLDER = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def _sync(path: Path) -> None:
    """A file, or a folder with everything in it, flushed to the disk."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync(child, os.O_RDONLY)
        for folder in [p for p in path.rglob("*") if p.is_dir()] + [path]:
            _fsync(folder, _FOLDER)
    else:
        _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:
        return  # a folder that cannot be opened to sync (not on Linux): the rename still orders nothing worse
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise  # EIO: the data did not reach the disk
    finally:
        os.close(fd)


def checksum(path: Path) -> str:
    """A file's XXH3-64 checksum as 16 hex digits: recorded when a kept entry is written, compared
    when a run reads it, so content damaged at its right size (zeroed blocks after a crash, flipped
    bits) is found; other damage passes once in 2**64. Read through a memory map, without a copy:
    ~5 GB/s where the file is in memory, where zlib's CRC-32 read into a buffer made ~1.2 GB/s
    (bench/cache_check.py). xxhash is installed with datasets, which needs it."""
    import mmap

    import xxhash

    found = xxhash.xxh3_64()
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                for start in range(0, len(view), 1 << 26):
                    with view[start:start + (1 << 26)] as part:
                        found.update(part)
    return found.hexdigest()


def checksums(folder: Path) -> Dict[str, str]:
    """Each file under `folder` by its relative path, with its checksum."""
    return {p.relative_to(folder).as_posix(): checksum(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def check_checksums(folder: Path, recorded: Dict[str, str]) -> None:
    """Damaged, naming the first file under `folder` whose content differs from its recorded checksum."""
    for name, expected in recorded.items():
        found = checksum(folder / name)
        if found != expected:
            raise Damaged(f"{name}'s content differs from what was written (XXH3-64 {found}, recorded {expected})")


_CHECKED = b"xxh3_64 "


def write_checked(path: Path, data: bytes) -> None:
    """`data` into a file, after a first line with its checksum (read back with `read_checked`)."""
    import xxhash

    path.write_bytes(_CHECKED + xxhash.xxh3_64_hexdigest(data).encode() + b"\n" + data)


def read_checked(path: Path) -> bytes:
    """What `write_checked` wrote; Damaged when the file does not hold it unchanged."""
    import xxhash

    head, _, data = path.read_bytes().partition(b"\n")
    if not head.startswith(_CHECKED):
        raise Damaged("its first line is not its checksum")
    found, recorded = xxhash.xxh3_64_hexdigest(data), head[len(_CHECKED):].decode(errors="replace")
    if found != recorded:
        raise Damaged(f"its content differs from what was written (XXH3-64 {found}, recorded {recorded})")
    return data


class Damaged(Exception):
    """A kept entry (cache, inspections, drawn set) that does not read back as it was written."""


def discard(path: Path, why: str) -> None:
    """A damaged entry that this project wrote under its cache root: warned about by name, moved
    aside at once (so no other reader opens it) and deleted; the caller builds it again."""
    logger.warning("%s is damaged (%s): rebuilding it", path, why)
    try:
        remove(path)
    except OSError as err:  # a read-only cache folder: the rebuild says where it cannot write
        logger.warning("could not remove %s: %s", path, first_line(err))


def remove(path: Path) -> None:
    """Delete a kept entry: first moved aside under a temporary name (so no reader opens it half
    deleted; one that has it open keeps reading, as Linux keeps the files of an open map), then
    deleted. Gone already (another process removed it) is fine."""
    aside = partial_name(path)
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    _delete(aside)


def _delete(path: Path) -> None:
    """A file or a folder this project wrote, gone (nothing there is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def mark_used(path: Path) -> None:
    """Record that a run read a kept entry (its marker file's mtime): `cache list` shows it, and
    `cache clear --older-than DAYS` keeps what was used since."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache folder: the date stays the build's


@contextmanager
def machine_by_machine(args: Any) -> Iterator[None]:
    """Data preparation in a distributed run (`args`: TrainingArguments): the main process first,
    then the first process of each other machine, then the rest, so that each machine prepares at
    most once and the others read what it kept. Where the machines share the cache folder
    (data.preprocess_dir; the usual cluster set-up) the other machines find the main process's
    caches and only read; on node-local cache folders each machine builds its own, never two
    processes of one machine at once. Every process passes the same two barriers, in the same order."""
    import torch.distributed as dist

    if getattr(args, "world_size", 1) <= 1 or not (dist.is_available() and dist.is_initialized()):
        yield
        return
    first = args.process_index == 0
    machine_first = args.local_process_index == 0 and not first
    if not first:
        dist.barrier()  # 1: the main process has prepared
    if not first and not machine_first:
        dist.barrier()  # 2: each machine's first process has
    try:
        yield
    finally:
        # Also when the preparation failed: the others are released and meet the same error
        # themselves, instead of waiting at a barrier until a timeout.
        if first:
            dist.barrier()
            dist.barrier()
        elif machine_first:
            dist.barrier()


def remove_stale_partials(root: Path) -> List[Path]:
    """Remove from `root` what `staged` left behind for a process of this host that has died (a
    run killed while it built a cache): never one of a live process, nor of another host sharing
    the folder, whose processes cannot be seen from here. Returns the removed paths, each logged."""
    if not root.is_dir():
        return []
    mine = re.compile(rf"^\..+\.{re.escape(_host())}\.(\d+)\.[0-9a-f]{{8}}\.partial$")
    removed = []
    for path in sorted(root.iterdir()):
        found = mine.match(path.name)
        if found is None or pid_alive(int(found.group(1))):
            continue
        _delete(path)
        logger.info("removed %s, left by process %s of this host, which is no longer running", path, found.group(1))
        removed.append(path)
    return removed


def human_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def require_space(where: Path, needed: int, what: str, hint: str) -> None:
    """Stop before writing `needed` bytes (an estimate) into `where` when its file system has less
    free, with a message saying how much is needed, where, and `hint` (what else to do)."""
    folder = Path(where)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder is made later: its nearest existing parent's disk
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise ConfigError(f"{what} needs about {human_bytes(needed)} in {where}, whose disk has {human_bytes(free)} "
                          f"free: free some space there, or {hint}")
