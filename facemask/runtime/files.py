"""The files `predict` and `detect` read and write: paths from files, folders and globs, each input
read once as upright RGB (or the reason it cannot be), and rows written as CSV, JSON or text."""

from __future__ import annotations

import csv
import glob
import io
import json
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from facemask.data.images import load_image


def write_rows(rows: List[Dict[str, Any]], path: Path, columns: Optional[List[str]] = None) -> None:
    """Rows as FILE.json (a list of objects) or CSV (`columns`, else the first row's keys)."""
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns or (list(rows[0]) if rows else ["file"]))
        writer.writeheader()
        writer.writerows(rows)


def collect_paths(patterns: Iterable[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Files named by PATH arguments (files, folders searched recursively, globs), and the misses."""
    found: List[Path] = []
    missing: List[Tuple[str, str]] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not any(
                part.startswith(".") for part in p.relative_to(path).parts))
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True) if Path(m).is_file())
            if matches:
                found += matches
            else:
                missing.append((pattern, "no such file, folder or matching glob"))
    unique = list(dict.fromkeys(found))
    return unique, missing


def read_input(path: Path, draft_side: Optional[int] = None) -> Tuple[Optional[Image.Image], str]:
    """(the image as upright RGB, "") or (None, why it cannot be classified): the one reading of an
    input file, and its messages, that predict and detect share."""
    try:
        if path.stat().st_size == 0:
            raise ValueError("empty file")
        return load_image(path, draft_side), ""
    except (UnidentifiedImageError, ValueError, OSError, Image.DecompressionBombError) as err:
        return None, "not an image file" if isinstance(err, UnidentifiedImageError) else str(err).splitlines()[0]


def read_batches(paths: Iterable[Path], draft_side: int, batch_size: int, skipped: List[Tuple[str, str]]
                 ) -> Iterator[Tuple[List[Path], List[Image.Image]]]:
    """The readable inputs, a batch of (paths, upright RGB images) at a time, so that a folder of any
    size holds one batch in memory; the unreadable ones are added to `skipped` with the reason."""
    kept: List[Path] = []
    images: List[Image.Image] = []
    for path in paths:
        image, reason = read_input(path, draft_side)
        if image is None:
            skipped.append((str(path), reason))
            continue
        images.append(image)
        kept.append(path)
        if len(images) == batch_size:
            yield kept, images
            kept, images = [], []
    if images:
        yield kept, images


def format_rows(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    for row in rows:
        out.write(f"{row['path']}\t{row['label']}\t{row['confidence']:.4f}\n")
    return out.getvalue()


def report_skipped(skipped: List[Tuple[str, str]], total: int) -> int:
    """Each skipped input and why on stderr, then how many of `total`: the exit code (1 if any)."""
    import sys

    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} of {total} inputs skipped", file=sys.stderr)
    return 1 if skipped else 0
