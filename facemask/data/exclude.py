"""Exclude lists (data.exclude): the images a run leaves out, named by content.

A list is a UTF-8 text file. Blank lines and lines starting with `#` are ignored; every other line
is one of

    PATH                    a file: its digest is taken from its bytes when the list is read
    sha256:HEX              an image by content (one held in a dataset with no file of its own)
    PATH<TAB>sha256:HEX     a file and the digest it had when listed

The digest is the SHA-256 of the image file's bytes, the one the audit records per image
(inspection.Inspection.sha256), so an image matches wherever it lies and whatever its name. A
relative PATH is taken from the list's folder. `label-issues` writes lists of the third kind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from facemask.config.schema import ConfigError
from facemask.data.storage import SHA256_HEX, file_sha256

logger = logging.getLogger("facemask")

PREFIX = "sha256:"


@dataclass(frozen=True)
class ExcludeEntry:
    line: int  # its line number in the list, from 1
    path: Optional[str]  # as written (None for a sha256: line)
    sha256: Optional[str]  # lower-case hex; None for a PATH that does not exist


@dataclass(frozen=True)
class ExcludeList:
    name: str  # the list's file name: what a run records and a card shows, never its folder
    entries: Tuple[ExcludeEntry, ...] = ()
    digests: FrozenSet[str] = field(default_factory=frozenset)

    @property
    def not_found(self) -> int:
        """Listed files with no digest given that do not exist: nothing to match them by."""
        return sum(entry.sha256 is None for entry in self.entries)


def _digest(text: str, where: str) -> str:
    hex_part = text[len(PREFIX):]
    if not SHA256_HEX.fullmatch(hex_part):
        raise ConfigError(f"{where}: {text!r} is not a digest: expected sha256: followed by 64 hexadecimal digits")
    return hex_part.lower()


def _file_digest(path: Path, where: str) -> Optional[str]:
    if not path.exists():
        return None
    if path.is_dir():
        raise ConfigError(f"{where}: {path} is a folder; list image files, one per line")
    try:
        return file_sha256(path)
    except OSError as err:
        raise ConfigError(f"{where}: cannot read {path}: {err.strerror or err}") from None


def read_user_text(path: Path, key: str, what: str, hint: str, missing: str) -> str:
    """The text of a file a user names under config key `key` (data.exclude, data.corrections): a
    ConfigError naming the key, the file and what to do when it is missing, a folder, binary (an
    image given by mistake) or not UTF-8. `what`: "a text list", "a CSV"; `missing`: what to give."""
    if not path.is_file():
        found = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{key}: {path} {found}: {missing}")
    raw = path.read_bytes()
    if b"\0" in raw:
        raise ConfigError(f"{key}: {path} is not {what} (it holds NUL bytes: an image or another binary file?); {hint}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{key}: {path} is not {what} (byte {err.start} is not UTF-8: an image or another binary "
                          f"file?); {hint}") from None


def read_exclude_list(path: str | Path) -> ExcludeList:
    """The list at `path`, each line's digest found (see the module docstring). A listed file that
    is missing and has no digest is kept as an entry without one (ExcludeList.not_found); a file
    that is not a text list, or a malformed digest, is a ConfigError naming the file and line."""
    path = Path(path).expanduser()
    text = read_user_text(path, "data.exclude", "a text list",
                          "expected a text list of image files or sha256: digests, one per line (docs/data.md)",
                          "give a text file listing the images to leave out (python -m facemask label-issues writes "
                          "one: exclude.txt)")
    folder = path.parent
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"data.exclude: {path}, line {number}"
        if "\t" in line:
            listed, _, digest = (part.strip() for part in line.partition("\t"))
            if not digest.startswith(PREFIX):
                raise ConfigError(f"{where}: after the tab comes the file's digest, sha256:HEX; found {digest!r}")
            entries.append(ExcludeEntry(number, listed, _digest(digest, where)))
        elif line.startswith(PREFIX):
            entries.append(ExcludeEntry(number, None, _digest(line, where)))
        else:
            entries.append(ExcludeEntry(number, line, _file_digest(folder / Path(line).expanduser(), where)))
    found = frozenset(entry.sha256 for entry in entries if entry.sha256 is not None)
    return ExcludeList(path.name, tuple(entries), found)


def write_exclude_list(path: str | Path, items: Iterable[Tuple[Optional[str], str]], header: str = "") -> Path:
    """Write a list that `read_exclude_list` reads: `header` as # lines, then one line per (file or
    None, SHA-256 hex). A file is written as its absolute path beside its digest, so the list still
    matches once the list or the images move."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    for name, digest in items:
        if not SHA256_HEX.fullmatch(digest or ""):
            raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
        if name is None:
            lines.append(f"{PREFIX}{digest.lower()}")
            continue
        listed = str(Path(name).expanduser().resolve())
        if any(c in listed for c in "\t\r\n"):
            raise ValueError(f"a file name with a tab or line break cannot be listed: {listed!r}")
        lines.append(f"{listed}\t{PREFIX}{digest.lower()}")
    path = Path(path)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def apply_exclusion(exclude: ExcludeList, members: Dict[str, List[int]], digest_of: Sequence[Optional[str]],
                    training: Iterable[str], drop_evaluation: bool) -> Tuple[Dict[str, List[int]], Dict[str, Any]]:
    """`members` ({split: image indices}) without the listed images: from the `training` splits
    always, from the others (test, extra test sets) only with `drop_evaluation`. `digest_of[k]` is
    image k's content digest, over every image the source holds. Returns the new members and the
    record run_info.json and the card show."""
    training = set(training)
    listed = exclude.digests
    hit = {name: [k for k in ks if digest_of[k] in listed] for name, ks in members.items()}
    held = set(digest_of) & listed
    order = sorted(hit, key=lambda name: name not in training)  # the training splits first
    dropped = {name: len(hit[name]) for name in order if name in training or drop_evaluation}
    kept = {name: len(ks) for name, ks in hit.items() if name not in dropped and ks}
    record = {"list": exclude.name, "lines": len(exclude.entries), "images_listed": len(listed),
              "excluded": dropped, "kept_in_evaluation": kept, "evaluation_cleaned": drop_evaluation,
              "not_found": exclude.not_found, "unmatched": len(listed - held)}
    gone = {name: set(hit[name]) for name in dropped}
    members = {name: [k for k in ks if k not in gone.get(name, ())] for name, ks in members.items()}
    logger.info("data.exclude %s: %d images left out (%s)", exclude.name, sum(dropped.values()),
                ", ".join(f"{name} {n}" for name, n in dropped.items()) or "none listed")
    if kept:
        logger.warning("data.exclude %s names %d evaluation images (%s): kept, so the test figures stay those of "
                       "the uncleaned sets; data.exclude_test=true drops them", exclude.name, sum(kept.values()),
                       ", ".join(f"{name} {n}" for name, n in kept.items()))
    if exclude.not_found:
        logger.warning("data.exclude %s: %d listed files do not exist and have no sha256: digest beside them, so "
                       "they match nothing", exclude.name, exclude.not_found)
    if record["unmatched"]:
        logger.warning("data.exclude %s: %d listed images are not in this data (a list made for other data?)",
                       exclude.name, record["unmatched"])
    return members, record
