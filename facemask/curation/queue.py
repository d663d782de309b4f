"""What the review page shows, in its order: the rows of a label-issues output folder
(label_issues.csv, most suspect first) or of a select output folder (to_label.csv, ranked), as
items named by content. Only the files these lists name are ever opened (review.md)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from facemask.config.schema import ConfigError
from facemask.run_folder import AUDIT_JSON, LABEL_ISSUES_CSV, LABEL_ISSUES_JSON, SELECT_JSON, TO_LABEL_CSV

NEEDED = {"label-issues": ("file", "given_label", "suggested_label", "sha256", "suggested_probability", "fold"),
          "select": ("file", "sha256", "suggested_label", "probability")}


@dataclass(frozen=True)
class Item:
    sha256: str  # the key: decisions, corrections and exclusions name an image by its content
    file: str  # as corrections.csv writes it: relative to the training data folder, or absolute
    path: Optional[Path]  # the absolute file to open; None for an image with no file of its own
    given_label: Optional[str]  # None for a pool image (select): it has none
    suggested_label: Optional[str]
    probability: Optional[float]  # the model's (out-of-fold for label-issues) probability of the suggestion
    flagged: bool = False  # label-issues' is_issue
    fold: Optional[int] = None  # the fold model that did not train on it (its map)
    # Exact copies (one digest) listed under different given labels: there is no one label to keep.
    conflict: bool = False


@dataclass
class Queue:
    folder: Path
    kind: str  # "label-issues" or "select"
    labels: List[str]
    items: List[Item]
    data_folder: Optional[Path] = None
    fold_runs: List[Path] = field(default_factory=list)  # label-issues: fold-N/, in fold order
    model: Optional[str] = None  # select: the run whose model scored the pool
    copies: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)  # sha256 -> the audit's pairs
    without_file: int = 0  # rows whose image has no file (a dataset's rows): not reviewable here

    def by_digest(self) -> Dict[str, Item]:
        return {item.sha256: item for item in self.items}


def _rows(path: Path, kind: str) -> List[Dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in NEEDED[kind] if c not in (reader.fieldnames or [])]
        if missing:
            again = ("run label-issues again with the same command: it reuses its finished folds and writes "
                     "the columns the review needs" if kind == "label-issues" else "run select again")
            raise ConfigError(f"{path} has no column {', '.join(missing)} (written by an older version?): {again}")
        return list(reader)


def _number(text: Optional[str]) -> Optional[float]:
    return float(text) if text not in (None, "") else None


def load_queue(folder: str | Path) -> Queue:
    """The review queue of `folder` (a label-issues or select output folder); a ConfigError names
    what is missing and which command writes it."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give a label-issues output folder (label_issues.csv) or a "
                          "select output folder (to_label.csv)")
    if (folder / LABEL_ISSUES_CSV).is_file():
        return _label_issues(folder)
    if (folder / TO_LABEL_CSV).is_file():
        return _selected(folder)
    raise ConfigError(f"{folder} holds neither {LABEL_ISSUES_CSV} (python -m facemask label-issues CONFIG writes it) "
                      f"nor {TO_LABEL_CSV} (python -m facemask select RUN POOL --budget N writes it)")


def _label_issues(folder: Path) -> Queue:
    report = json.loads((folder / LABEL_ISSUES_JSON).read_text(encoding="utf-8")) \
        if (folder / LABEL_ISSUES_JSON).is_file() else {}
    if "labels" not in report:
        raise ConfigError(f"{folder / LABEL_ISSUES_JSON} is missing or from an older version: run label-issues again "
                          "with the same command (it reuses its finished folds)")
    data_folder = Path(report["data_folder"]) if report.get("data_folder") else None
    items: Dict[str, Item] = {}  # one item per digest: exact copies are one image, decided once
    without = 0
    for row in _rows(folder / LABEL_ISSUES_CSV, "label-issues"):
        # A file outside the data folder (an image data.corrections added) is listed by its absolute path.
        has_file = not row["file"].startswith("sha256:") and (data_folder is not None
                                                               or Path(row["file"]).is_absolute())
        if not has_file:
            without += 1
            continue
        first = items.get(row["sha256"])
        if first is not None:
            if first.given_label != row["given_label"]:
                items[row["sha256"]] = replace(first, conflict=True)
            continue
        items[row["sha256"]] = Item(row["sha256"], row["file"], (data_folder or Path("/")) / row["file"],
                                    row["given_label"], row["suggested_label"], _number(row["suggested_probability"]),
                                    row.get("is_issue") == "True", int(row["fold"]))
    fold_runs = [folder / name for name in report.get("fold_runs", [])]
    queue = Queue(folder, "label-issues", list(report["labels"]), list(items.values()), data_folder, fold_runs,
                  without_file=without)
    queue.copies = _copies(fold_runs, data_folder, queue.by_digest())
    return queue


def _selected(folder: Path) -> Queue:
    report = json.loads((folder / SELECT_JSON).read_text(encoding="utf-8")) if (folder / SELECT_JSON).is_file() else {}
    rows = _rows(folder / TO_LABEL_CSV, "select")
    items = [Item(row["sha256"], row["file"], Path(row["file"]), None, row["suggested_label"] or None,
                  _number(row["probability"])) for row in rows]
    # The model's classes in its label order: the prob_<label> columns select writes.
    labels = [column[len("prob_"):] for column in (rows[0] if rows else {}) if column.startswith("prob_")]
    if not labels:
        raise ConfigError(f"{folder / TO_LABEL_CSV} has no prob_<label> columns (the model's classes): "
                          "run select again")
    return Queue(folder, "select", labels, items, model=report.get("run"))


def _copies(fold_runs: List[Path], data_folder: Optional[Path], by_digest: Dict[str, Item]) -> Dict[str, List[Dict]]:
    """Per image, its copies and near-copies that the audit found (fold 0's audit sees every training
    image), as {file, label, distance} of the other image."""
    if not fold_runs or data_folder is None or not (fold_runs[0] / AUDIT_JSON.name).is_file():
        return {}
    report = json.loads((fold_runs[0] / AUDIT_JSON.name).read_text(encoding="utf-8"))
    by_file = {str(item.path): item.sha256 for item in by_digest.values()}
    found: Dict[str, List[Dict[str, Any]]] = {}
    for key in ("duplicates_within_splits", "label_conflicts", "leaks"):
        for pair in report.get(key, []):
            a, b = pair["a"], pair["b"]
            for one, other in ((a, b), (b, a)):
                digest = by_file.get(str(Path(data_folder, one["file"]))) or by_file.get(str(Path(one["file"])))
                if digest:
                    found.setdefault(digest, []).append({"file": other["file"], "label": other["label"],
                                                         "split": other.get("split"), "distance": pair["distance"]})
    return found
