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


_CHECKPOINT = re.compile(r"checkpoint-\d+")


def read_seen_images(name_or_path: Optional[str], revision: Optional[str] = None) -> Optional[SeenImages]:
    """The images the pretraining run at `name_or_path` used: a local run folder or one of its
    `checkpoint-N` folders (the listing is written when pretraining starts, in the run folder), or a
    Hub repository it was pushed to. None, quietly, when it is not a pretraining run; None with a
    warning that says why when it may be one but its images cannot be read (the check is then
    skipped, never silently)."""
    if name_or_path is None:
        return None
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return _read_local(folder)
    return _read_hub(name_or_path, revision)


def _read_local(folder: Path) -> Optional[SeenImages]:
    run = folder.resolve()
    if _CHECKPOINT.fullmatch(run.name) and not _is_pretraining_run(run) and _is_pretraining_run(run.parent):
        run = run.parent
    if not _is_pretraining_run(run):
        return None
    listing = run_folder.PRETRAINING_IMAGES.path(run)
    if not listing.is_file():
        _cannot_check(run.name, f"it is a pretraining run without {listing.name} (older runs, or data.audit was false)")
        return None
    return _parse(run.name, listing)


def _is_pretraining_run(folder: Path) -> bool:
    return run_folder.PRETRAINING.path(folder).is_file() or run_folder.PRETRAINING_IMAGES.path(folder).is_file()


def _read_hub(repo: str, revision: Optional[str]) -> Optional[SeenImages]:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, RemoteEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    name = run_folder.PRETRAINING_IMAGES.name
    # The Hub's own record that the repository has no such file (kept in the cache when it was last
    # asked online) answers offline too.
    try:
        if try_to_load_from_cache(repo, name, revision=revision) is _CACHED_NO_EXIST:
            return None
    except HFValidationError:
        return None  # neither a folder nor a Hub id (a path not made yet): loading the model says so
    try:
        listing = Path(hf_hub_download(repo, name, revision=revision))
    except GatedRepoError as err:
        _cannot_check(repo, "whether it is a pretraining run is unknown: the repository is gated (log in with a token "
                            f"that has access: {str(err).splitlines()[0][:200]})")
        return None
    except (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError):
        # The Hub answered: no listing. A pretraining run pushed before it was written, or (most
        # models) not a pretraining run at all.
        try:
            hf_hub_download(repo, run_folder.PRETRAINING.name, revision=revision)
        except Exception:
            return None
        _cannot_check(repo, f"it is a pretraining run without {name}")
        return None
    except Exception as err:  # offline and not cached, a network error
        _cannot_check(repo, f"whether it is a pretraining run is unknown: {name} could not be read from the Hub "
                            f"({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:200] if str(err) else 'no detail'})")
        return None
    return _parse(repo, listing)


def _cannot_check(name: str, why: str) -> None:
    logger.warning("this run's test images are NOT checked against the images %s was pretrained on: %s. A test image "
                   "pretraining used would go unnoticed; fine-tune from a pretraining run folder (or one of its "
                   "checkpoint-N folders) that lists its images to have them checked", name, why)


def _parse(name: str, listing: Path) -> SeenImages:
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


# A fine-tuned run's own images, by content (run_folder.RUN_IMAGES): `select` leaves them out of a pool.
def write_run_images(folder: Path, inspections: Optional[Dict[str, List[object]]]) -> Optional[Path]:
    """split,sha256 for every image of each split (the audit's inspections, so no byte is read
    again); nothing without inspections (data.audit=false)."""
    if not inspections:
        return None
    import csv

    from facemask.data.storage import staged

    path = run_folder.RUN_IMAGES.path(folder)
    # Whole or not at all: a record cut short by a kill would let select pick the run's own images.
    with staged(path) as partial, partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "sha256"])
        for split, found in inspections.items():
            writer.writerows((split, d) for d in sorted({getattr(i, "sha256", None) for i in found} - {None}))
    return path


def read_run_images(folder: Path) -> Dict[str, FrozenSet[str]]:
    """{split: digests} a run folder recorded, or a ConfigError that says why there is none."""
    import csv

    path = run_folder.RUN_IMAGES.path(Path(folder))
    if not path.is_file():
        raise ConfigError(f"{folder} records no per-image digests ({run_folder.RUN_IMAGES.name} is missing: a run "
                          "trained before it was written, with data.audit=false, or not a training run folder), so "
                          "the images it trained and was tested on cannot be left out of the pool. Retrain the run "
                          "(data.audit=true, the default), or point at a run folder that has the file")
    found: Dict[str, set] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            digest = (row.get("sha256") or "").strip()
            if not _HEX.fullmatch(digest):
                raise ConfigError(f"{path}:{number}: {digest[:80]!r} is not a SHA-256 digest: the file is damaged; "
                                  "retrain the run to write it again")
            found.setdefault(row.get("split") or "", set()).add(digest)
    return {split: frozenset(d) for split, d in found.items()}
