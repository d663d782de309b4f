"""Where kept data lives on disk: the cache root, unique temporary names for a write that ends in
a rename, and a digest of a split's stored images.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

if TYPE_CHECKING:  # imported where used: the CLI's --help reaches this module through export's defaults
    import datasets


def stored_images(ds: datasets.Dataset, image_column: str) -> Iterator[Any]:
    """The undecoded image column as Arrow struct arrays ({bytes, path}), in order, a chunk at a
    time: reading it never decodes, nor holds every image's bytes at once."""
    for table in ds.select_columns([image_column]).with_format("arrow").iter(batch_size=1000):
        yield from table.column(image_column).chunks


def images_digest(ds: datasets.Dataset, image_column: str) -> str:
    """A digest of the split's images in order: their bytes, or for files on disk their path, size,
    modification time and inode change time. `cp -p`, `rsync -a` and archive extraction keep a
    file's size and mtime while its bytes change, but they cannot set the ctime."""
    digest = hashlib.sha256()
    for chunk in stored_images(ds, image_column):
        contents, paths = chunk.field("bytes"), chunk.field("path")
        for i in range(len(chunk)):
            data = contents[i]
            if data.is_valid:
                digest.update(data.as_buffer())
            else:
                path = paths[i].as_py()
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}".encode())
            digest.update(b"\n")
    return digest.hexdigest()


def unique_suffix() -> str:
    """A temporary name's suffix no other process makes, on this host or another one sharing the
    filesystem (PIDs repeat across nodes)."""
    import secrets
    import socket

    return f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"


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

    Where another process finished the same folder first, its copy stands: the content is the same
    by construction (the name is a digest of it). A file replaces any earlier one at once.
    """
    staging = final.with_name(f".{final.name}.{unique_suffix()}.partial")
    try:
        if folder:
            staging.mkdir(parents=True)
        yield staging
        try:
            os.replace(staging, final)
        except OSError:
            if not (folder and final.is_dir()):
                raise
    finally:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)
