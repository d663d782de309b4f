"""The review's journal (review.jsonl): every decision appended at once, flushed and synced, never
rewritten; the state (who is decided, what remains) is a replay of it. corrections.csv and
review_exclude.txt are made from that state after every decision, each written whole and renamed
into place, so the files training reads always match the journal.

A line is one JSON object: {"seq", "time", "file", "sha256", "given_label", "decision", "label"}, the
decision one of label (a class key), keep (the given label stands), exclude, skip; or
{"seq", "time", "decision": "undo", "undoes": SEQ}, which takes back the decision numbered SEQ (the
last one still standing). A line a killed process left half written is counted and passed over.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from facemask.config.schema import ConfigError
from facemask.curation.queue import Item, Queue
from facemask.run_folder import CORRECTIONS_CSV, REVIEW_EXCLUDE_LIST, REVIEW_JOURNAL

logger = logging.getLogger("facemask")

DECISIONS = ("label", "keep", "exclude", "skip")
REVIEWED = ("label", "keep", "exclude")  # a person looked and decided; skip leaves it for later


@dataclass(frozen=True)
class Decision:
    seq: int
    time: str
    file: str
    sha256: str
    given_label: Optional[str]
    decision: str
    label: Optional[str]  # the label training reads (label, keep); None for exclude and skip

    @property
    def changed(self) -> bool:
        return self.decision == "label" and self.label != self.given_label


class ReviewBusy(ConfigError):
    """Another review process holds this folder's journal."""


class Journal:
    """The decisions on `queue`'s items, replayed from DIR/review.jsonl and appended to it.

    One process at a time writes a folder's journal (an exclusive lock on the file, held while the
    Journal is open and dropped by the kernel when the process dies); within the process, decisions
    are serialised, and a decision on an image already decided, or an undo of anything but the last
    decision still standing, is refused: a second browser tab showing a stale image cannot write twice.
    """

    def __init__(self, queue: Queue, lock: bool = True) -> None:
        """`lock=False`: read only (an export beside an open page): nothing is written or created."""
        self.queue = queue
        self.path = queue.folder / REVIEW_JOURNAL
        self.standing: List[Decision] = []  # in the order made; undo pops the last
        self.damaged = 0
        self.writable = lock
        self._seq = 0
        self._mutex = threading.Lock()
        self._items = queue.by_digest()
        self._handle: Optional[Any] = None
        if not lock:
            if self.path.is_file():
                with self.path.open(encoding="utf-8") as handle:
                    self._replay(handle.read())
            return
        self._handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise ReviewBusy(f"another review is open on {queue.folder} ({self.path} is locked): close it first, "
                             "so that no decision is written twice") from None
        self._handle.seek(0)
        text = self._handle.read()
        self._replay(text)
        if text and not text.endswith("\n"):
            # A half-written last line stays as it is (nothing is rewritten); the next line starts afresh.
            self._append_raw("\n")
        if self.standing or (queue.folder / CORRECTIONS_CSV).exists():
            # A process killed between a decision and these files left them a decision behind.
            self.write_outputs()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _replay(self, text: str) -> None:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                self._seq = max(self._seq, int(entry["seq"]))
                if entry["decision"] == "undo":
                    if self.standing and self.standing[-1].seq == entry["undoes"]:
                        self.standing.pop()
                    continue
                if entry["decision"] not in DECISIONS:
                    raise ValueError(entry["decision"])
                self.standing.append(Decision(**{k: entry.get(k) for k in Decision.__dataclass_fields__}))
            except (ValueError, KeyError, TypeError):
                self.damaged += 1
                logger.warning("%s, line %d: not a decision (a write a killed process left half done?): passed over",
                               self.path, number)

    def _append_raw(self, text: str) -> None:
        if self._handle is None:
            raise RuntimeError(f"{self.path} is open read only")
        self._handle.write(text)
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _append(self, entry: Dict[str, Any]) -> None:
        self._append_raw(json.dumps(entry, ensure_ascii=False) + "\n")

    @property
    def decided(self) -> Dict[str, Decision]:
        """Each image's decision standing (the last made: a skipped image decided later is decided)."""
        return {d.sha256: d for d in self.standing}

    def current(self) -> Optional[Item]:
        """Where the page resumes: the first image of the queue with no decision standing; once every
        image has one, the first skipped image (skip is "not now"), in the queue's order."""
        decided = self.decided
        undecided = next((item for item in self.queue.items if item.sha256 not in decided), None)
        if undecided is not None:
            return undecided
        return next((item for item in self.queue.items if decided[item.sha256].decision == "skip"), None)

    def record(self, sha256: str, decision: str, label: Optional[str] = None) -> Optional[Decision]:
        """Decide image `sha256`: appended and synced before this returns, then the corrections and
        the exclude list rewritten. None (nothing written) when that image is already decided."""
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r}: one of {', '.join(DECISIONS)}")
        item = self._items.get(sha256)
        if item is None:
            raise KeyError(f"{sha256} is not in {self.queue.folder}'s queue")
        if decision == "label":
            if label not in self.queue.labels:
                raise ValueError(f"label {label!r}: one of {', '.join(self.queue.labels)}")
        elif decision == "keep":
            if item.given_label is None:
                raise ValueError(f"{item.file} has no given label to keep: choose its class")
            if item.conflict:
                raise ValueError(f"{item.file} has exact copies listed under other labels: choose its class")
            label = item.given_label
        else:
            label = None
        with self._mutex:
            standing = self.decided.get(sha256)
            # Decided already (another tab, a key pressed twice): nothing written. A skip is "not
            # now": a later decision on that image stands over it.
            if standing is not None and (standing.decision != "skip" or decision == "skip"):
                return None
            self._seq += 1
            made = Decision(self._seq, _now(), item.file, item.sha256, item.given_label, decision, label)
            self._append(made.__dict__)
            self.standing.append(made)
            self.write_outputs()
            return made

    def undo(self, expected: Optional[int] = None) -> Optional[Decision]:
        """Take back the last decision still standing (only if it is `expected`, when given): an
        undo line appended, the outputs rewritten. Returns the decision taken back, or None."""
        with self._mutex:
            if not self.standing or (expected is not None and self.standing[-1].seq != expected):
                return None
            last = self.standing.pop()
            self._seq += 1
            self._append({"seq": self._seq, "time": _now(), "decision": "undo", "undoes": last.seq})
            self.write_outputs()
            return last

    def counts(self) -> Dict[str, int]:
        decided = self.decided
        made = list(decided.values())
        return {"images": len(self.queue.items),
                "reviewed": sum(d.decision in REVIEWED for d in made),
                "changed": sum(d.changed for d in made),
                "excluded": sum(d.decision == "exclude" for d in made),
                "skipped": sum(d.decision == "skip" for d in made),
                # Skipped images remain to be decided; decisions on images no longer listed (a
                # label-issues run again) take none away.
                "remaining": sum(item.sha256 not in decided or decided[item.sha256].decision == "skip"
                                 for item in self.queue.items)}

    def write_outputs(self) -> None:
        """corrections.csv (every label a person gave or confirmed) and review_exclude.txt (every
        image a person excluded), each replaced whole."""
        from facemask.data.corrections import Correction, write_corrections
        from facemask.data.exclude import write_exclude_list
        from facemask.data.storage import staged

        made = list(self.decided.values())
        labelled = [d for d in made if d.decision in ("label", "keep")]
        write_corrections(self.queue.folder / CORRECTIONS_CSV,
                          [Correction(0, d.file, d.sha256, d.given_label, d.label) for d in labelled])
        excluded = [d for d in made if d.decision == "exclude"]
        items = self._items
        paths = {d.sha256: items[d.sha256].path if d.sha256 in items else None for d in excluded}
        with staged(self.queue.folder / REVIEW_EXCLUDE_LIST) as partial:
            write_exclude_list(partial, [(str(paths[d.sha256]) if paths[d.sha256] else None, d.sha256)
                                         for d in excluded],
                               f"{len(excluded)} images excluded by a person in python -m facemask review "
                               f"({self.path.name}); data.exclude reads this list.")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def open_journal(folder: str | Path, lock: bool = True) -> Journal:
    """The queue of `folder` and its journal, replayed (a ConfigError if either cannot be read);
    `lock=False` reads it only."""
    from facemask.curation.queue import load_queue

    return Journal(load_queue(folder), lock)
