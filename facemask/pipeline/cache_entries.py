"""What is kept under the cache root (`python -m facemask cache list|clear`): preprocessing caches,
kept audit inspections, drawn sets, and unfinished writes, each with its size, images and when a
run last used it. Only names this project writes are listed or removed; anything else in the
folder is left alone, and so is an unfinished write of a live process or of another host.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

from facemask.data.storage import Damaged, human_bytes, read_checked, remove, remove_stale_partials

KINDS = {
    re.compile(r"^(train|eval)-(\d+)px-[0-9a-f]{24}$"): "preprocessing cache",
    re.compile(r"^audit-[0-9a-f]{24}\.json$"): "audit inspections",
    re.compile(r"^synthetic-(\d+)x(\d+)px-seed-?\d+-[0-9a-f]{16}$"): "drawn set",
    re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.partial$"): "unfinished write",
}
DAY = 24 * 3600


@dataclass
class Entry:
    path: Path
    kind: str
    bytes: int
    images: Optional[int]
    last_used: float  # seconds since the epoch: when a run last opened it (its marker file's mtime)

    @property
    def age_days(self) -> float:
        return (time.time() - self.last_used) / DAY


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _describe(path: Path, kind: str) -> Entry:
    images: Optional[int] = None
    marker = path
    try:
        if kind == "preprocessing cache":
            marker = path / "cache.json"
            images = json.loads(marker.read_text(encoding="utf-8")).get("images")
        elif kind == "audit inspections":
            images = len(json.loads(read_checked(path)))
        elif kind == "drawn set":
            marker = path / "dataset_info.json"
            images = int(re.match(r"^synthetic-(\d+)x", path.name).group(1))
    except (OSError, ValueError, Damaged):
        pass  # damaged or half-gone: listed all the same, and a run rebuilds it
    last_used = (marker if marker.exists() else path).stat().st_mtime
    return Entry(path, kind, _size(path), images, last_used)


def kept_entries(root: Path) -> List[Entry]:
    """Everything this project keeps in `root`, oldest use first."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        kind = next((name for pattern, name in KINDS.items() if pattern.match(path.name)), None)
        if kind is not None:
            try:
                found.append(_describe(path, kind))
            except FileNotFoundError:
                pass  # finished or removed by a run while this one listed
    return sorted(found, key=lambda e: e.last_used)


def clear(root: Path, older_than_days: Optional[float] = None) -> List[Entry]:
    """Remove the kept entries last used more than `older_than_days` ago (all of them without it);
    unfinished writes only where their process, of this host, has died. Returns what was removed."""
    stale = {p.resolve() for p in remove_stale_partials(root)}
    removed = []
    for entry in kept_entries(root):
        if entry.kind == "unfinished write":
            continue  # removed above when their process is gone; never a live one or another host's
        if older_than_days is not None and entry.age_days <= older_than_days:
            continue
        remove(entry.path)
        removed.append(entry)
    return removed + [Entry(p, "unfinished write", 0, None, 0.0) for p in sorted(stale)]


def table(entries: List[Entry]) -> str:
    lines = [f"{'kind':<20} {'size':>10} {'images':>8} {'last used':>16}  name"]
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        images = "" if e.images is None else str(e.images)
        lines.append(f"{e.kind:<20} {human_bytes(e.bytes):>10} {images:>8} {used:>16}  {e.path.name}")
    lines.append(f"{len(entries)} entries, {human_bytes(sum(e.bytes for e in entries))}")
    return "\n".join(lines)


def add_arguments(parser: Any) -> None:
    """`python -m facemask cache list|clear`."""
    parser.add_argument("action", choices=["list", "clear"])
    parser.add_argument("--older-than", type=float, metavar="DAYS",
                        help="clear only what no run has used for DAYS days")
    parser.add_argument("--cache-dir", help="the cache folder (data.preprocess_dir; default: <datasets cache>/"
                                            "facemask-preprocessed)")


def command(args: Any) -> int:
    from facemask.data.storage import cache_root

    root = cache_root(args.cache_dir)
    if args.action == "list":
        print(f"{root}:\n{table(kept_entries(root))}")
        return 0
    removed = clear(root, args.older_than)
    for entry in removed:
        print(f"removed {entry.kind} {entry.path.name}")
    print(f"removed {len(removed)} entries, {human_bytes(sum(e.bytes for e in removed))}, from {root}")
    return 0
