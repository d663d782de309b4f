"""Corrections files (data.corrections): labels a person decided, matched to images by content.

A corrections file is a UTF-8 CSV with a header row naming the columns `file, sha256, given_label,
label` (these names are fixed; their order is free, other columns are ignored). One row per image:

    file         where the image was: relative to the training folder for its own images, absolute
                 for images from elsewhere (a labelled pool image); empty for an image held in a
                 dataset with no file of its own
    sha256       the SHA-256 of the image file's bytes, the one the audit records per image
                 (inspection.Inspection.sha256)
    given_label  the label the image had when it was decided; empty for an image that had none
    label        the label decided: a class name of the data

Matching is by digest only, as data.exclude matches, so a moved or renamed copy still matches:

- an image of a training-side split (audit.TRAINING_SIDE) takes the row's label;
- an image of an evaluation split (test, the extra test sets) keeps its label: the run warns and
  counts it, so test figures never change silently;
- a row whose digest is in no split is a new image: it is read from `file` (an absolute path, or
  one relative to the CSV's folder), which must still hold those bytes, and joins the train split
  after the held-out splits are carved (data/prepare.py). A relative `file` that does not exist
  names an image of the training folder that has left the data: it is counted as unmatched.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from facemask.config.schema import ConfigError
from facemask.data.exclude import read_user_text
from facemask.data.sources import label_key
from facemask.data.storage import SHA256_HEX, file_sha256, staged

logger = logging.getLogger("facemask")

COLUMNS = ("file", "sha256", "given_label", "label")
_PREFIX = "sha256:"


@dataclass(frozen=True)
class Correction:
    line: int  # its line number in the file, from 1 (the header is line 1)
    file: str  # as written; empty for an image with no file of its own
    sha256: str  # lower-case hex
    given_label: Optional[str]  # None when empty: an image that had no label (a pool image)
    label: str


@dataclass(frozen=True)
class Corrections:
    name: str  # the file's name: what a run records and a card shows, never its folder
    path: Path
    rows: Tuple[Correction, ...] = ()

    @property
    def digest(self) -> str:
        """A digest of the decisions alone (each image's digest and label, sorted): what the run
        trains on changes with it, and only with it (a reordered file or moved images keep it)."""
        decided = sorted({(row.sha256, row.label) for row in self.rows})
        return hashlib.sha256("".join(f"{d} {label}\n" for d, label in decided).encode()).hexdigest()


_HINT = (f"expected a CSV with the header {','.join(COLUMNS)} (python -m facemask review writes one: corrections.csv; "
         "docs/data.md)")


def read_corrections(path: str | Path) -> Corrections:
    """The file at `path` (see the module docstring), every row checked: a file that is not such a
    CSV, a missing column, a malformed digest, an empty label or one digest given two labels is a
    ConfigError naming the file and the line. Nothing is matched yet (`apply_corrections`)."""
    path = Path(path).expanduser()
    text = read_user_text(path, "data.corrections", "a CSV", _HINT,
                          "give the CSV of label decisions (python -m facemask review writes one: corrections.csv)")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"data.corrections: {path} is empty; {_HINT}")
    header = [name.strip() for name in header]
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        guesses = [f"{found!r} -> {best[0]!r}" for found in header if found not in COLUMNS
                   for best in [difflib.get_close_matches(found.lower(), missing, n=1, cutoff=0.5)] if best]
        said = f" (rename {', '.join(guesses)})" if guesses else ""
        raise ConfigError(f"data.corrections: {path}, line 1: no column {', '.join(map(repr, missing))}{said}; the "
                          f"header names {', '.join(map(repr, header))}, and must name the columns "
                          f"{','.join(COLUMNS)} (fixed names)")
    at = {name: header.index(name) for name in COLUMNS}
    rows: List[Correction] = []
    first: Dict[str, Correction] = {}
    for fields in reader:
        number = reader.line_num  # the line the row ends on (a quoted field may span lines)
        if not any(field.strip() for field in fields):
            continue
        where = f"data.corrections: {path}, line {number}"
        if len(fields) < len(header):
            raise ConfigError(f"{where}: {len(fields)} fields where the header has {len(header)}; write one row "
                              f"per image with {','.join(COLUMNS)}")
        value = {name: fields[at[name]].strip() for name in COLUMNS}
        digest = value["sha256"]
        digest = digest[len(_PREFIX):] if digest.lower().startswith(_PREFIX) else digest
        if not SHA256_HEX.fullmatch(digest):
            raise ConfigError(f"{where}: sha256 {value['sha256']!r} is not a digest: expected the 64 hexadecimal "
                              "digits of the SHA-256 of the image file's bytes")
        if not value["label"]:
            raise ConfigError(f"{where}: the label is empty; give the decided class name (an image to leave out "
                              "belongs in data.exclude's list, not here)")
        row = Correction(number, value["file"], digest.lower(), value["given_label"] or None, value["label"])
        earlier = first.setdefault(row.sha256, row)
        if label_key(earlier.label) != label_key(row.label):
            raise ConfigError(f"{where}: the image {row.sha256[:12]}... is labelled {row.label!r} here and "
                              f"{earlier.label!r} on line {earlier.line}; keep one decision per image")
        rows.append(row)
    return Corrections(path.name, path, tuple(rows))


def write_corrections(path: str | Path, rows: Iterable[Correction]) -> Path:
    """Write `rows` as a file `read_corrections` reads (their `line` is not written), atomically: to
    a temporary file beside `path`, synced, then renamed, so a reader sees the old file or the new
    one, never half of one. A row it could not read back is a ValueError."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    decided: Dict[str, str] = {}
    for row in rows:
        if not SHA256_HEX.fullmatch(row.sha256 or ""):
            raise ValueError(f"not a SHA-256 hex digest: {row.sha256!r}")
        if not (row.label or "").strip():
            raise ValueError(f"an empty label for {row.file or row.sha256}")
        if label_key(decided.setdefault(row.sha256.lower(), row.label)) != label_key(row.label):
            raise ValueError(f"two labels for one image ({row.sha256}): {decided[row.sha256.lower()]!r} and "
                             f"{row.label!r}")
        writer.writerow([row.file, row.sha256.lower(), row.given_label or "", row.label.strip()])
    path = Path(path)
    with staged(path) as staging:
        staging.write_text(out.getvalue(), encoding="utf-8")
    return path


def label_ids(corrections: Corrections, labels: Sequence[str]) -> Dict[str, int]:
    """{image digest: its decided class id}; a label that is not one of `labels` (matched as class
    names are: case, spaces, - and _ aside) is a ConfigError listing the classes."""
    by_key = {label_key(name): k for k, name in enumerate(labels)}
    found = {}
    for row in corrections.rows:
        if label_key(row.label) not in by_key:
            raise ConfigError(f"data.corrections: {corrections.path}, line {row.line}: {row.label!r} is not a class "
                              f"of this data (its classes: {', '.join(labels)}); correct the label or the data")
        found[row.sha256] = by_key[label_key(row.label)]
    return found


def new_images(corrections: Corrections, known: Set[str]) -> List[Tuple[Correction, Path]]:
    """The rows whose digest is in no image of `known` that are new images to add, each with its
    file (absolute), once per digest. A row with no file, or a relative one that does not exist,
    names an image that has left the data: it adds nothing (`apply_corrections` counts it as
    unmatched). A new image's file must exist and still hold the bytes it was labelled by: else a
    ConfigError naming the file and the line."""
    folder = corrections.path.parent
    added: List[Tuple[Correction, Path]] = []
    seen = set()
    for row in corrections.rows:
        if row.sha256 in known or row.sha256 in seen:
            continue
        seen.add(row.sha256)
        where = f"data.corrections: {corrections.path}, line {row.line}"
        if not row.file:
            continue  # an image held in a dataset, not in this one: nothing to read it from
        written = Path(row.file).expanduser()
        file = written if written.is_absolute() else folder / written
        if not file.exists() and not written.is_absolute():
            continue
        if not file.is_file():
            what = "is a folder" if file.is_dir() else "does not exist"
            raise ConfigError(f"{where}: the image {file} {what}, and no image of the data has its digest "
                              f"{row.sha256[:12]}...: put the labelled image back, or remove its row")
        try:
            digest = file_sha256(file)
        except OSError as err:
            raise ConfigError(f"{where}: cannot read {file}: {err.strerror or err}") from None
        if digest != row.sha256:
            raise ConfigError(f"{where}: {file} has changed since it was labelled (its SHA-256 is {digest[:12]}..., "
                              f"the row's {row.sha256[:12]}...): label it again, or restore the file")
        added.append((row, file.resolve()))
    return added


def apply_corrections(corrections: Corrections, members: Dict[str, List[int]], digest_of: Sequence[Optional[str]],
                      label_of: Sequence[int], labels: Sequence[str], training: Iterable[str],
                      new: Iterable[int] = ()) -> Tuple[Dict[int, int], Dict[str, Any]]:
    """The new label of each image of the `training` splits whose digest a row names and whose
    label the row changes ({image index: class id}), and the record run_info.json and the card show.
    `members` ({split: image indices}) are the final splits; `digest_of[k]` and `label_of[k]` image
    k's content digest and class id, over every image the source holds; `new` the indices of the
    new images read from their files (`new_images`): those still in `members` are counted as added,
    the others (copies of evaluation images, unreadable, excluded) as not added. Evaluation images
    keep their labels: they are counted and warned about."""
    training = set(training)
    decided = label_ids(corrections, labels)
    final = {k for ks in members.values() for k in ks}
    new = set(new)
    added = new & final
    not_added = len({digest_of[k] for k in new - final} - {digest_of[k] for k in added})
    relabelled: Dict[int, int] = {}
    changed: Dict[str, int] = {}
    confirmed: Dict[str, int] = {}
    kept: Dict[str, int] = {}
    differs = 0
    given = {row.sha256: row.given_label for row in corrections.rows}
    used: Set[str] = set()
    order = sorted(members, key=lambda name: name not in training)  # the training splits first
    for name in order:
        hits = [k for k in members[name] if digest_of[k] in decided]
        used.update(digest_of[k] for k in members[name] if digest_of[k] is not None)
        if name not in training:
            if hits:
                kept[name] = len(hits)
            continue
        own = [k for k in hits if k not in added]
        changed[name] = confirmed[name] = 0
        for k in own:
            was = given[digest_of[k]]
            differs += was is not None and label_key(was) != label_key(labels[label_of[k]])
            if decided[digest_of[k]] == label_of[k]:
                confirmed[name] += 1
            else:
                relabelled[k] = decided[digest_of[k]]
                changed[name] += 1
    in_added = {digest_of[k] for k in added}
    unmatched = sum(digest not in used for digest in decided) - not_added
    record = {"file": corrections.name, "rows": len(corrections.rows), "sha256": corrections.digest,
              "relabelled": changed, "confirmed": confirmed, "added": len(in_added),
              "not_added": not_added, "kept_in_evaluation": kept, "unmatched": unmatched,
              "given_label_differs": differs}
    logger.info("data.corrections %s: %d labels changed (%s), %d confirmed, %d new images added to train",
                corrections.name, sum(changed.values()), ", ".join(f"{n} {c}" for n, c in changed.items()) or "none",
                sum(confirmed.values()), len(in_added))
    if kept:
        logger.warning("data.corrections %s names %d evaluation images (%s): their labels are kept, so the test "
                       "figures stay those of the given test labels", corrections.name, sum(kept.values()),
                       ", ".join(f"{name} {n}" for name, n in kept.items()))
    if not_added:
        logger.warning("data.corrections %s: %d new images were left out (copies of evaluation images, unreadable, "
                       "or excluded: see data_audit.json)", corrections.name, not_added)
    if differs:
        logger.warning("data.corrections %s: %d images had another label when they were reviewed than the data gives "
                       "them now (the data changed since?); the decided labels are applied", corrections.name, differs)
    if unmatched:
        logger.warning("data.corrections %s: %d rows name images this run does not use (not in this data, or left "
                       "out by the audit or data.exclude)", corrections.name, unmatched)
    return relabelled, record
