"""The images a pretraining run reconstructed, by content: a model fine-tuned from it has seen them.

`python -m facemask pretrain` writes the SHA-256 of every image it used (the audit's content
digest, inspection.Inspection.sha256) into its run folder; a run whose `model.name_or_path` is that
folder reads them, and its audit treats a test or extra test image among them as a leak under
`data.on_leak` (drop: left out of that test set; error: refused; keep: kept, and said).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional

from facemask import run_folder
from facemask.config.schema import ConfigError

logger = logging.getLogger("facemask")

_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SeenImages:
    run: str  # the pretraining run's folder name: what a report or a card shows, never its path
    digests: FrozenSet[str] = field(default_factory=frozenset)


def write_seen_images(folder: Path, digests: Iterable[Optional[str]]) -> int:
    """The digests, sorted, one a line; returns how many."""
    found = sorted({d for d in digests if d})
    run_folder.PRETRAINING_IMAGES.path(folder).write_text("".join(f"{d}\n" for d in found), encoding="utf-8")
    return len(found)


def read_seen_images(name_or_path: Optional[str], revision: Optional[str] = None) -> Optional[SeenImages]:
    """The images the pretraining run at `name_or_path` used: a local run folder, or a Hub
    repository it was pushed to (its pretraining.json and pretraining_images.txt are downloaded).
    None when it is not a pretraining run (a training run, a plain checkpoint), or the Hub cannot
    be reached."""
    if name_or_path is None:
        return None
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not run_folder.PRETRAINING.path(folder).is_file():
            return None
        listing: Optional[Path] = run_folder.PRETRAINING_IMAGES.path(folder)
        name = folder.resolve().name
        listing = listing if listing.is_file() else None
    else:
        from huggingface_hub import hf_hub_download

        try:
            hf_hub_download(name_or_path, run_folder.PRETRAINING.name, revision=revision)
        except Exception:  # not a pretraining run (most models), offline, private
            return None
        try:
            listing = Path(hf_hub_download(name_or_path, run_folder.PRETRAINING_IMAGES.name, revision=revision))
        except Exception:
            listing = None
        name = name_or_path
    if listing is None:
        logger.warning("%s is a pretraining run without %s: its test images cannot be checked against the images it "
                       "was pretrained on", name, run_folder.PRETRAINING_IMAGES.name)
        return None
    digests = set()
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not _HEX.fullmatch(line.strip()):
            raise ConfigError(f"{name}: {run_folder.PRETRAINING_IMAGES.name}:{number}: {line[:80]!r} is not a SHA-256 "
                              "digest (64 lower-case hexadecimal digits): the file is damaged; rerun the pretraining, "
                              "or remove the file to fine-tune without the leak check")
        digests.add(line.strip())
    return SeenImages(name, frozenset(digests))


def seen_members(seen: SeenImages, members: Dict[str, List[int]], digests: List[Optional[str]],
                 evaluation: Iterable[str]) -> Dict[str, List[int]]:
    """Per evaluation split, the members whose image the pretraining used."""
    return {name: [k for k in members.get(name, []) if digests[k] in seen.digests] for name in evaluation
            if name in members}
