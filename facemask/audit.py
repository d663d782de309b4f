"""Data audit before training: unreadable files, duplicates and leaks, shortcuts, class balance.

Every image is inspected as stored (bytes or path, undecoded by datasets), with the same opener
training uses, so what the audit passes, training can read.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import warnings
from collections import Counter, defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from .cache import cache_root, images_digest, stored_images
from .config import ConfigError, DataConfig
from .data import PreparedData

BAD_CATEGORIES = {
    "zero_bytes": "zero-byte file",
    "not_image": "not an image",
    "truncated": "truncated image",
    "corrupt": "corrupt image",
    "decompression_bomb": "more pixels than PIL's decompression-bomb limit",
    "too_small": "smaller than data.min_image_side",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif", ".pgm", ".ppm"}
HASH_SIZE = 16  # 256-bit perceptual hash: 64 bits confuse simple, similar images


@dataclass
class Inspection:
    status: str
    reason: str = ""
    format: Optional[str] = None
    mode: Optional[str] = None
    width: int = 0
    height: int = 0
    exif_rotated: bool = False
    sha256: Optional[str] = None
    phash: Optional[np.ndarray] = None
    size_bytes: int = 0


def _read_bytes(item: Dict[str, Any]) -> bytes:
    if item.get("bytes") is not None:
        return item["bytes"]
    return Path(item["path"]).read_bytes()


def inspect_image(item: Dict[str, Any], min_side: int) -> Inspection:
    """Check one stored image without trusting its extension, decoding it fully once."""
    import imagehash

    data = _read_bytes(item)
    result = Inspection("ok", size_bytes=len(data))
    if not data:
        return Inspection("zero_bytes", "the file is empty")
    result.sha256 = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            result.format, result.mode = image.format, image.mode
            result.width, result.height = image.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.width * image.height > limit:
                result.status = "decompression_bomb"
                result.reason = f"{image.width}x{image.height} = {image.width * image.height} pixels > {limit}"
                return result
            orientation = image.getexif().get(0x0112)
            result.exif_rotated = orientation not in (None, 1)
            if image.format == "JPEG":
                image.draft("RGB", (4 * HASH_SIZE, 4 * HASH_SIZE))
            image.load()
    except UnidentifiedImageError:
        return Inspection("not_image", "PIL cannot identify it as an image", size_bytes=len(data), sha256=result.sha256)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        result.status, result.reason = "decompression_bomb", str(err).splitlines()[0]
        return result
    except OSError as err:
        message = str(err).splitlines()[0]
        result.status = "truncated" if "truncated" in message or "broken data stream" in message else "corrupt"
        result.reason = message
        return result
    except (SyntaxError, ValueError) as err:
        result.status, result.reason = "corrupt", str(err).splitlines()[0]
        return result
    if min(result.width, result.height) < min_side:
        result.status = "too_small"
        result.reason = f"{result.width}x{result.height}, smallest side below {min_side}"
        return result
    from .data import to_rgb

    result.phash = imagehash.phash(to_rgb(image), hash_size=HASH_SIZE).hash.flatten()
    return result


def _inspect_chunk(items: List[Dict[str, Any]], min_side: int) -> List[Inspection]:
    return [inspect_image(item, min_side) for item in items]


def _inspect_splits(todo: Dict[str, datasets.Dataset], image_column: str, min_side: int,
                    chunk: int = 256) -> Dict[str, List[Inspection]]:
    """One inspection per stored image, chunk by chunk (bytes are not all held at once), on every core."""
    workers = min(os.cpu_count() or 1, 8)
    found: Dict[str, List[Inspection]] = {split: [] for split in todo}
    pending: deque = deque()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        for split, ds in todo.items():
            for start in range(0, len(ds), chunk):
                items = ds[start:start + chunk][image_column]
                pending.append((split, pool.submit(_inspect_chunk, items, min_side)))
                if len(pending) > 2 * workers:
                    name, future = pending.popleft()
                    found[name].extend(future.result())
        while pending:
            name, future = pending.popleft()
            found[name].extend(future.result())
    return found


def _to_json(found: Inspection) -> Dict[str, Any]:
    record = dict(found.__dict__)
    if found.phash is not None:
        record["phash"] = np.packbits(found.phash).tobytes().hex()
    return record


def _from_json(record: Dict[str, Any]) -> Inspection:
    found = Inspection(**record)
    if found.phash is not None:
        found.phash = np.unpackbits(np.frombuffer(bytes.fromhex(found.phash), dtype=np.uint8)).astype(bool)
    return found


def _saved_inspections(ds: datasets.Dataset, image_column: str, cfg: DataConfig) -> Path:
    """Where a split's inspections are kept: named by its images and what the inspection depends on,
    so a second run on the same data decodes nothing here either."""
    import imagehash
    import PIL

    root = cache_root(cfg.preprocess_dir)
    payload = json.dumps({"images": images_digest(ds, image_column), "min_side": cfg.min_image_side,
                          "hash_size": HASH_SIZE, "pillow": PIL.__version__, "imagehash": imagehash.__version__,
                          "max_pixels": Image.MAX_IMAGE_PIXELS, "version": 1}, sort_keys=True)
    return root / f"audit-{hashlib.sha256(payload.encode()).hexdigest()[:24]}.json"


def _records(data: PreparedData, cfg: DataConfig) -> List[Dict[str, Any]]:
    splits = {split: ds.cast_column(data.image_column, datasets.Image(decode=False)) for split, ds in data.splits.items()}
    saved = {split: _saved_inspections(ds, data.image_column, cfg) for split, ds in splits.items()}
    inspections = {split: [_from_json(r) for r in json.loads(path.read_text(encoding="utf-8"))]
                   for split, path in saved.items() if path.is_file()}
    todo = {split: ds for split, ds in splits.items() if split not in inspections}
    if todo:
        for split, found in _inspect_splits(todo, data.image_column, cfg.min_image_side).items():
            inspections[split] = found
            try:
                saved[split].parent.mkdir(parents=True, exist_ok=True)
                partial = saved[split].with_suffix(f".{os.getpid()}.partial")
                partial.write_text(json.dumps([_to_json(f) for f in found]), encoding="utf-8")
                partial.replace(saved[split])
            except OSError:
                pass  # a read-only cache folder costs the next run a re-inspection, nothing else
    records = []
    for split, ds in splits.items():
        paths: List[Optional[str]] = []
        for chunk in stored_images(ds, data.image_column):
            paths.extend(chunk.field("path").to_pylist())
        for index, (path, label, found) in enumerate(zip(paths, ds[data.label_column], inspections[split])):
            records.append({"split": split, "index": index, "file": path or f"{split}[{index}]",
                            "label": data.labels[label], "inspection": found})
    return records


def _pairs_across(records: List[Dict[str, Any]], max_distance: int) -> Tuple[List[Dict], List[Dict]]:
    """Exact (same bytes) and near (perceptual-hash distance <= max_distance) duplicate pairs."""
    exact, near = [], []
    records = [r for r in records if r["inspection"].status == "ok"]  # bad files are reported as such
    by_hash = defaultdict(list)
    for r in records:
        if r["inspection"].sha256:
            by_hash[r["inspection"].sha256].append(r)
    for group in by_hash.values():
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                exact.append(_pair(group[i], group[j], 0))
    hashed = [r for r in records if r["inspection"].phash is not None]
    if len(hashed) > 1:
        bits = np.packbits(np.stack([r["inspection"].phash for r in hashed]), axis=1).view(np.uint64)
        for i in range(len(hashed) - 1):
            distance = np.bitwise_count(bits[i] ^ bits[i + 1:]).sum(axis=1)
            for offset in np.flatnonzero(distance <= max_distance):
                a, b = hashed[i], hashed[i + 1 + offset]
                if a["inspection"].sha256 != b["inspection"].sha256:  # same bytes: listed as exact already
                    near.append(_pair(a, b, int(distance[offset])))
    return exact, near


def _pair(a: Dict[str, Any], b: Dict[str, Any], distance: int) -> Dict[str, Any]:
    return {"a": {"split": a["split"], "file": a["file"], "label": a["label"]},
            "b": {"split": b["split"], "file": b["file"], "label": b["label"]}, "distance": distance}


def _shortcut_features(records: List[Dict[str, Any]]) -> Dict[str, List[Any]]:
    ok = [r["inspection"] for r in records]
    return {
        "file format": [i.format or "unknown" for i in ok],
        "colour mode": [i.mode or "unknown" for i in ok],
        "alpha channel": [bool(i.mode and ("A" in i.mode or i.mode == "P")) for i in ok],
        "width": [i.width for i in ok],
        "height": [i.height for i in ok],
        "aspect ratio": [round(i.width / i.height, 3) if i.height else 0.0 for i in ok],
        "EXIF rotation": [i.exif_rotated for i in ok],
    }


def _shortcuts(records: List[Dict[str, Any]], threshold: float, seed: int) -> List[Dict[str, Any]]:
    """Attributes other than the face that predict the class alone: a one-feature classifier's
    cross-validated balanced accuracy, with the per-class distributions behind it."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.tree import DecisionTreeClassifier

    usable = [r for r in records if r["inspection"].status == "ok"]
    labels = [r["label"] for r in usable]
    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < 2:
        return []
    folds = min(5, min(counts.values()))
    found = []
    for name, values in _shortcut_features(usable).items():
        categorical = not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if len(set(values)) < 2:
            continue
        if categorical:
            categories = sorted(set(map(str, values)))
            x = np.array([[categories.index(str(v))] for v in values])
        else:
            x = np.array(values, dtype=float).reshape(-1, 1)
        tree = DecisionTreeClassifier(max_depth=2, random_state=seed)
        cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        score = float(np.mean(cross_val_score(tree, x, labels, cv=cv, scoring="balanced_accuracy")))
        if score >= threshold:
            per_class: Dict[str, Any] = {}
            for label in sorted(counts):
                own = [v for v, lab in zip(values, labels) if lab == label]
                if categorical:
                    per_class[label] = {str(k): n for k, n in Counter(map(str, own)).most_common(5)}
                else:
                    per_class[label] = {"min": min(own), "median": float(np.median(own)), "max": max(own)}
            found.append({"attribute": name, "balanced_accuracy": round(score, 4), "per_class": per_class})
    return found


def _folder_notes(cfg: DataConfig) -> Tuple[List[str], List[str]]:
    """Files an image folder holds that are not loaded (other extensions) and empty class folders."""
    ignored, empty = [], []
    for key in ("train_dir", "validation_dir", "test_dir"):
        folder = getattr(cfg, key)
        if not folder or not Path(folder).is_dir():
            continue
        for class_dir in sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = 0
            for path in class_dir.rglob("*"):
                if not path.is_file() or any(part.startswith(".") for part in path.relative_to(folder).parts):
                    continue
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    images += 1
                else:
                    ignored.append(str(path))
            if images == 0:
                empty.append(str(class_dir))
    return ignored, empty


def run_audit(data: PreparedData, cfg: DataConfig, seed: int = 42) -> Dict[str, Any]:
    records = _records(data, cfg)
    ignored, empty = _folder_notes(cfg)
    bad = [{"split": r["split"], "index": r["index"], "file": r["file"], "category": r["inspection"].status,
            "reason": r["inspection"].reason} for r in records if r["inspection"].status != "ok"]
    exact, near = _pairs_across(records, cfg.near_duplicate_distance)
    leaks = [p for p in exact + near if p["a"]["split"] != p["b"]["split"]]
    within = [p for p in exact + near if p["a"]["split"] == p["b"]["split"]]
    splits = {}
    for split in data.splits:
        own = [r for r in records if r["split"] == split]
        classes = Counter(r["label"] for r in own)
        splits[split] = {"images": len(own), "class_counts": {label: classes.get(label, 0) for label in data.labels},
                         "bad": sum(r["inspection"].status != "ok" for r in own)}
    imbalance = []
    for split, summary in splits.items():
        present = [n for n in summary["class_counts"].values()]
        if min(present) == 0 or max(present) / min(present) > cfg.max_class_ratio:
            imbalance.append({"split": split, "class_counts": summary["class_counts"]})
    shortcuts = _shortcuts(records, cfg.shortcut_threshold, seed)
    modes = Counter(r["inspection"].mode for r in records if r["inspection"].mode and r["inspection"].mode != "RGB")
    report = {
        "source": data.source,
        "checked_images": len(records),
        "splits": splits,
        "bad_files": bad,
        "bad_counts": dict(Counter(b["category"] for b in bad)),
        "non_rgb_modes": dict(sorted(modes.items())),
        "exif_rotated": sum(r["inspection"].exif_rotated for r in records),
        "ignored_files": ignored,
        "empty_class_folders": empty,
        "leaks": leaks,
        "duplicates_within_splits": within,
        "exact_duplicate_pairs": len(exact),
        "near_duplicate_pairs": len(near),
        "near_duplicate_distance": cfg.near_duplicate_distance,
        "shortcuts": shortcuts,
        "imbalance": imbalance,
        "on_bad_image": cfg.on_bad_image,
        "allow_leaks": cfg.allow_leaks,
    }
    report["errors"], report["warnings"] = _findings(report)
    return report


def _findings(report: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    errors, warnings_ = [], []
    if report["empty_class_folders"]:
        errors.append(f"{len(report['empty_class_folders'])} empty class folder(s): "
                      + ", ".join(report["empty_class_folders"]))
    if report["bad_files"]:
        text = f"{len(report['bad_files'])} unreadable or unusable image(s)"
        (warnings_ if report["on_bad_image"] == "skip" else errors).append(
            text + (" (skipped)" if report["on_bad_image"] == "skip" else ""))
    if report["leaks"]:
        text = f"{len(report['leaks'])} duplicate pair(s) across splits (leak)"
        (warnings_ if report["allow_leaks"] else errors).append(text + (" (allowed)" if report["allow_leaks"] else ""))
    for s in report["shortcuts"]:
        warnings_.append(f"shortcut: {s['attribute']} alone predicts the class "
                         f"(balanced accuracy {s['balanced_accuracy']})")
    for item in report["imbalance"]:
        warnings_.append(f"class imbalance in {item['split']}: {item['class_counts']}")
    if report["duplicates_within_splits"]:
        warnings_.append(f"{len(report['duplicates_within_splits'])} duplicate pair(s) within splits")
    if report["ignored_files"]:
        warnings_.append(f"{len(report['ignored_files'])} file(s) without an image extension ignored")
    return errors, warnings_


def refusal(report: Dict[str, Any]) -> Optional[str]:
    """Why training must not start, naming the files and the option that allows it; None if it may."""
    if not report["errors"]:
        return None
    lines = ["the data audit found problems that stop training:"]
    if report["empty_class_folders"]:
        lines.append("  empty class folders (remove them or add images): " + ", ".join(report["empty_class_folders"]))
    if report["bad_files"] and report["on_bad_image"] != "skip":
        lines.append("  unreadable images (set data.on_bad_image=skip to leave them out):")
        lines += [f"    {b['file']}: {BAD_CATEGORIES[b['category']]} ({b['reason']})" for b in report["bad_files"][:20]]
        if len(report["bad_files"]) > 20:
            lines.append(f"    ... and {len(report['bad_files']) - 20} more (see data_audit.json)")
    if report["leaks"] and not report["allow_leaks"]:
        lines.append("  the same image in more than one split (remove the copies, or set data.allow_leaks=true):")
        lines += [f"    {p['a']['split']}:{p['a']['file']} = {p['b']['split']}:{p['b']['file']}"
                  + (f" (hash distance {p['distance']})" if p["distance"] else "") for p in report["leaks"][:20]]
        if len(report["leaks"]) > 20:
            lines.append(f"    ... and {len(report['leaks']) - 20} more (see data_audit.json)")
    return "\n".join(lines)


def drop_bad(data: PreparedData, report: Dict[str, Any]) -> PreparedData:
    """The splits without the files the audit found unusable."""
    bad = defaultdict(set)
    for b in report["bad_files"]:
        bad[b["split"]].add(b["index"])
    splits = datasets.DatasetDict({
        split: ds.select([i for i in range(len(ds)) if i not in bad[split]]) if bad[split] else ds
        for split, ds in data.splits.items()
    })
    for split, ds in splits.items():
        if len(ds) == 0:
            raise ConfigError(f"{data.source}: every image of the {split} split is unusable (see data_audit.json)")
    return PreparedData(splits, data.labels, data.image_column, data.label_column, data.source)


def summary_markdown(report: Dict[str, Any]) -> str:
    import jinja2

    from .card import CARDS_DIR

    template = jinja2.Template((CARDS_DIR / "data_audit.md.j2").read_text(encoding="utf-8"))
    return template.render(report=report, categories=BAD_CATEGORIES).strip() + "\n"


def write_audit(report: Dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "data_audit.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output_dir / "data_audit.md").write_text(summary_markdown(report), encoding="utf-8")
