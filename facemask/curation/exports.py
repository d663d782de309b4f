"""The review queue and its decisions in other tools' formats.

- Label Studio: tasks with the model's suggestion as a prediction (and a person's decision, where
  one stands, as an annotation), in the JSON list Label Studio imports, and the labelling config
  they are made for. Images are named as Label Studio's local-files storage serves them
  (`/data/local-files/?d=PATH`, PATH relative to LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, which is
  the training data folder, or / for absolute paths): the images stay where they are.
- imagefolder: a folder datasets' `load_dataset("imagefolder", data_dir=...)` reads, with each
  reviewed image (not excluded) linked in and `metadata.csv` giving its reviewed label (and its
  digest, given label and decision): links, not copies, where the file system allows.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from facemask.config.schema import ConfigError
from facemask.curation.journal import Journal
from facemask.data.storage import staged
from facemask.curation.queue import Item, Queue
from facemask.run_folder import IMAGEFOLDER_EXPORT, IMAGEFOLDER_METADATA, LABEL_STUDIO_CONFIG, LABEL_STUDIO_TASKS

FORMATS = ("label-studio", "imagefolder")
FROM_NAME, TO_NAME = "label", "image"  # the labelling config's control and object names


def label_studio_config(labels: List[str]) -> str:
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInLine="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


def _local_files_url(item: Item, queue: Queue) -> str:
    """Label Studio's local-files URL of the image: relative to the data folder (its document root),
    percent-encoded (a name with a space, # or & stays one path)."""
    if queue.data_folder is not None and not Path(item.file).is_absolute():
        return f"/data/local-files/?d={quote(item.file)}"
    return f"/data/local-files/?d={quote(str(item.path).lstrip('/'))}"


def _choice(label: str) -> Dict[str, Any]:
    return {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}


def label_studio_tasks(journal: Journal, model_version: str) -> List[Dict[str, Any]]:
    """One task per image to review, in the queue's order: label-issues' flagged images and any other
    image a person decided, or every select pick. Data (the image, its file, digest and given label),
    the suggestion as a prediction with its probability, and a standing label or keep decision as an
    annotation (an excluded or skipped image has none)."""
    queue, decided = journal.queue, journal.decided
    shown = [item for item in queue.items
             if queue.kind != "label-issues" or item.flagged or item.sha256 in decided]
    tasks = []
    for number, item in enumerate(shown, start=1):
        task: Dict[str, Any] = {"id": number,
                                "data": {"image": _local_files_url(item, queue), "file": item.file,
                                         "sha256": item.sha256, "given_label": item.given_label or ""}}
        if item.suggested_label:
            task["predictions"] = [{"model_version": model_version, "score": item.probability,
                                    "result": [_choice(item.suggested_label)]}]
        made = decided.get(item.sha256)
        if made is not None and made.label is not None:
            task["annotations"] = [{"result": [_choice(made.label)], "ground_truth": False}]
        tasks.append(task)
    return tasks


def write_label_studio(journal: Journal, out: Path) -> List[Path]:
    queue = journal.queue
    version = queue.model or (f"label-issues {queue.folder.name}" if queue.kind == "label-issues" else "select")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in ((out / LABEL_STUDIO_TASKS,
                        json.dumps(label_studio_tasks(journal, version), indent=1, ensure_ascii=False) + "\n"),
                       (out / LABEL_STUDIO_CONFIG, label_studio_config(queue.labels))):
        with staged(path) as partial:  # a reader, Label Studio's import among them, never sees half a file
            partial.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def _link(source: Path, target: Path) -> None:
    """`target` names `source`'s bytes: a hard link, else a symbolic one, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        try:
            target.symlink_to(source)
        except OSError:
            shutil.copy2(source, target)


def write_imagefolder(journal: Journal, out: Path) -> List[Path]:
    """out/imagefolder/: the images a person labelled or confirmed, under their digest (names cannot
    collide), and metadata.csv. An earlier export there is refused rather than mixed with this one."""
    folder = out / IMAGEFOLDER_EXPORT
    if folder.exists():
        raise ConfigError(f"{folder} exists (an earlier export): move it away or give another --output")
    items = journal.queue.by_digest()
    out.mkdir(parents=True, exist_ok=True)
    # Made under a temporary name and renamed when whole: a failure leaves no half export behind.
    with staged(folder, folder=True) as partial:
        rows = []
        for made in journal.decided.values():
            item = items.get(made.sha256)
            if made.label is None or item is None or item.path is None:
                continue
            name = f"images/{made.sha256[:16]}{item.path.suffix.lower()}"
            _link(item.path, partial / name)
            rows.append({"file_name": name, "label": made.label, "sha256": made.sha256,
                         "given_label": made.given_label or "", "decision": made.decision, "source_file": made.file})
        with (partial / IMAGEFOLDER_METADATA).open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["file_name", "label", "sha256", "given_label", "decision",
                                                   "source_file"])
            writer.writeheader()
            writer.writerows(rows)
    return [folder / IMAGEFOLDER_METADATA]


def export(journal: Journal, fmt: str, out: Path) -> List[Path]:
    if fmt == "label-studio":
        return write_label_studio(journal, out)
    if fmt == "imagefolder":
        return write_imagefolder(journal, out)
    raise ValueError(f"--export {fmt}: one of {', '.join(FORMATS)}")
