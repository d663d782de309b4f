"""Data audit before training: unreadable files, duplicates and leaks, shortcuts, class balance.

The per-image facts come from `inspection.py`, pairs from `duplicates.py`, shortcut rules from
`shortcuts.py` (all in this package); this module puts them into the report (data_audit.json / .md), its errors and
warnings, and the refusal that stops training.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from facemask import run_folder
from facemask.config.schema import ConfigError, DataConfig
from facemask.data.inspection import Inspection
from facemask.data.shortcuts import attribute_shortcuts, attribute_values, partial_shortcuts
from facemask.data.sources import PreparedData

BAD_CATEGORIES = {
    "zero_bytes": "zero-byte file",
    "not_image": "not an image",
    "truncated": "truncated image",
    "corrupt": "corrupt image",
    "decompression_bomb": "more pixels than PIL's decompression-bomb limit",
    "too_small": "smaller than data.min_image_side",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif", ".pgm", ".ppm"}
logger = logging.getLogger("facemask")

MAX_LISTED_PAIRS = 1000  # pairs within splits listed in data_audit.json (all are counted)


# Splits a model is trained or selected on: a copy shared with any other split is a leak.
TRAINING_SIDE = {"train", "validation"}
# The training source's own splits (extra test sets come from other sources).
SOURCE_SPLITS = {"train", "validation", "test"}


def _side(rec: Dict[str, Any], split: Optional[str] = None) -> Dict[str, Any]:
    return {"split": split or rec["split"], "file": rec["file"], "label": rec["label"]}


def build_report(data: PreparedData, recs: List[Dict[str, Any]], members: Dict[str, List[int]], exact: List[Dict],
                 near: List[Dict], removed: Dict[str, Dict[int, int]], cfg: DataConfig, seed: int,
                 carved: Dict[str, Any], image_side: int, edges: List[float],
                 pretraining: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The audit of the splits as training will read them (after leak removal and carving)."""
    final = {k: name for name, ks in members.items() for k in ks}
    ignored, empty = _folder_notes(cfg)
    bad = [{"split": r["split"], "index": r["index"], "file": r["file"], "category": r["inspection"].status,
            "reason": r["inspection"].reason} for r in recs if r["inspection"].status != "ok"]
    leaks, between_tests, inside, conflicts = [], [], [], []
    for pair in exact + near:
        a, b = recs[pair["i"]], recs[pair["j"]]
        if a["label"] != b["label"]:
            conflicts.append({"a": _side(a), "b": _side(b), "distance": pair["distance"]})
        if pair["i"] not in final or pair["j"] not in final:
            continue
        sa, sb = final[pair["i"]], final[pair["j"]]
        entry = {"a": _side(a, sa), "b": _side(b, sb), "distance": pair["distance"]}
        if sa == sb:
            inside.append(entry)
        elif sa in TRAINING_SIDE or sb in TRAINING_SIDE:
            leaks.append(entry)
        else:  # test and an extra test set, or two extra sets: each stays whole, neither was trained on
            between_tests.append(entry)
    distance = {(min(p["i"], p["j"]), max(p["i"], p["j"])): p["distance"] for p in exact + near}
    removed_report = {
        split: [{**_side(recs[k]), "copy_of": _side(recs[other]), "distance": distance[min(k, other), max(k, other)]}
                for k, other in sorted(copies.items())]
        for split, copies in removed.items()
    }
    splits = {}
    for split, ks in members.items():
        classes = Counter(recs[k]["label"] for k in ks)
        splits[split] = {"images": len(ks), "class_counts": {label: classes.get(label, 0) for label in data.labels},
                         "bad": sum(recs[k]["inspection"].status != "ok" for k in ks)}
    imbalance = []
    for split, summary in splits.items():
        present = list(summary["class_counts"].values())
        if min(present) == 0 or max(present) / min(present) > cfg.max_class_ratio:
            imbalance.append({"split": split, "class_counts": summary["class_counts"]})
    # The shortcut rules judge the training source: extra test sets from other sources would change
    # what they flag.
    usable = [recs[k] for k in sorted(final) if recs[k]["inspection"].status == "ok" and final[k] in SOURCE_SPLITS]
    found = [r["inspection"] for r in usable]
    labels = [r["label"] for r in usable]
    values = [attribute_values(f, edges) for f in found]
    in_use = [recs[k] for k in final]
    modes = Counter(r["inspection"].mode for r in in_use if r["inspection"].mode and r["inspection"].mode != "RGB")
    report = {
        "source": data.source,
        "checked_images": len(recs),
        "image_side": image_side,
        "splits": splits,
        "carved": carved,
        "bad_files": bad,
        "bad_counts": dict(Counter(b["category"] for b in bad)),
        "non_rgb_modes": dict(sorted(modes.items())),
        "exif_rotated": sum(r["inspection"].exif_rotated for r in in_use),
        "ignored_files": ignored,
        "empty_class_folders": empty,
        "on_leak": cfg.on_leak,
        "leaks": leaks,
        "leaks_removed": removed_report,
        "copies_between_test_sets": between_tests,
        "duplicates_within_splits": inside[:MAX_LISTED_PAIRS],
        "duplicate_pairs_within_splits": len(inside),
        "label_conflicts": conflicts[:MAX_LISTED_PAIRS],
        "label_conflict_pairs": len(conflicts),
        "exact_duplicate_pairs": len(exact),
        "near_duplicate_pairs": len(near),
        "near_duplicate_distance": cfg.near_duplicate_distance,
        **shortcut_findings(found, values, labels, cfg, seed),
        "partial_shortcut_rule": {"min_images": cfg.shortcut_min_images, "purity": cfg.shortcut_purity,
                                  "margin_over_class_share": 0.10},
        "sharpness_edges": edges,
        "imbalance": imbalance,
        "on_bad_image": cfg.on_bad_image,
    }
    if pretraining is not None:
        # The pretraining run the model starts from: which evaluation images it reconstructed.
        report["pretraining"] = pretraining
    report["errors"], report["warnings"] = _findings(report)
    return report


def shortcut_findings(found: List[Inspection], values: List[Dict[str, str]], labels: List[str], cfg: DataConfig,
                      seed: int) -> Dict[str, List[Dict[str, Any]]]:
    """The audit's shortcut rules on usable images: attributes that tell the classes apart over the
    whole set ("shortcuts") or for a slice of it ("partial_shortcuts"). evaluate.py applies the
    same rules to the data it evaluates."""
    return {"shortcuts": attribute_shortcuts(found, labels, cfg.shortcut_threshold, seed),
            "partial_shortcuts": partial_shortcuts(values, labels, cfg.shortcut_min_images, cfg.shortcut_purity)}


def flagged_attributes(report: Dict[str, Any]) -> List[str]:
    """Attributes the audit found to tell the classes apart, wholly or for a slice."""
    names = [s["attribute"] for s in report.get("shortcuts", [])]
    names += [s["attribute"] for s in report.get("partial_shortcuts", [])]
    return list(dict.fromkeys(names))


def removal_summary(report: Dict[str, Any]) -> List[str]:
    """'52 training images removed: copies of test images', one line per split that lost copies."""
    lines = []
    for split, rows in report.get("leaks_removed", {}).items():
        if not rows:
            continue
        where = Counter(row["copy_of"]["split"] for row in rows)
        what = " and ".join(f"{name} images" + (f" ({n})" if len(where) > 1 else "") for name, n in sorted(where.items()))
        noun = "training" if split == "train" else split
        lines.append(f"{len(rows)} {noun} image{'s' if len(rows) != 1 else ''} removed: copies of {what}")
    return lines


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


def _findings(report: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    errors, warnings_ = [], []
    if report["empty_class_folders"]:
        errors.append(f"{len(report['empty_class_folders'])} empty class folder(s): "
                      + ", ".join(report["empty_class_folders"]))
    if report["bad_files"]:
        text = f"{len(report['bad_files'])} unreadable or unusable image(s)"
        (warnings_ if report["on_bad_image"] == "skip" else errors).append(
            text + (" (skipped)" if report["on_bad_image"] == "skip" else ""))
    for line in removal_summary(report):
        warnings_.append(line + " (data.on_leak=drop)")
    if report["leaks"]:
        if report["on_leak"] == "error":
            errors.append(f"{len(report['leaks'])} duplicate pair(s) across splits (leak)")
        else:
            warnings_.append(f"{len(report['leaks'])} duplicate pair(s) across splits kept (data.on_leak=keep)")
    seen = report.get("pretraining") or {"leaks": {}}
    for split, files in seen["leaks"].items():
        text = (f"{len(files)} {split} image{'s' if len(files) != 1 else ''} used by pretraining run {seen['run']} "
                "(the encoder reconstructed them)")
        if seen["on_leak"] == "error":
            errors.append(text)
        else:
            warnings_.append(text + (": removed from the split (data.on_leak=drop)" if seen["on_leak"] == "drop"
                                     else ": kept (data.on_leak=keep), so that figure is of images it saw"))
    for s in report["shortcuts"]:
        warnings_.append(f"shortcut: {s['attribute']} alone predicts the class "
                         f"(balanced accuracy {s['balanced_accuracy']})")
    for s in report["partial_shortcuts"]:
        warnings_.append(f"partial shortcut: {s['message']}")
    for item in report["imbalance"]:
        fix = ("; to correct for it in training, set recipe.class_weights=balanced (weighted loss) or "
               "recipe.balanced_sampler=true (class-balanced sampling)" if item["split"] == "train" else "")
        warnings_.append(f"class imbalance in {item['split']}: {item['class_counts']}{fix}")
    if report.get("copies_between_test_sets"):
        warnings_.append(f"{len(report['copies_between_test_sets'])} duplicate pair(s) shared by test sets (test and "
                         "data.extra_test sets stay whole, so their figures are not independent)")
    if report["duplicate_pairs_within_splits"]:
        warnings_.append(f"{report['duplicate_pairs_within_splits']} duplicate pair(s) within splits")
    if report["label_conflict_pairs"]:
        warnings_.append(f"{report['label_conflict_pairs']} duplicate pair(s) with different labels (mislabelled?)")
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
    if report["leaks"] and report["on_leak"] == "error":
        lines.append("  the same image in more than one split (remove the copies, or set data.on_leak=drop to "
                     "drop the training-side copies):")
        lines += [f"    {p['a']['split']}:{p['a']['file']} = {p['b']['split']}:{p['b']['file']}"
                  + (f" (hash distance {p['distance']})" if p["distance"] else "") for p in report["leaks"][:20]]
        if len(report["leaks"]) > 20:
            lines.append(f"    ... and {len(report['leaks']) - 20} more (see data_audit.json)")
    seen = report.get("pretraining") or {"leaks": {}}
    if seen["leaks"] and seen["on_leak"] == "error":
        lines.append(f"  test images that pretraining run {seen['run']} used (evaluate on images it did not see, or "
                     "set data.on_leak=drop to leave them out of the test sets):")
        files = [f"    {split}:{f}" for split, found in seen["leaks"].items() for f in found]
        lines += files[:20] + ([f"    ... and {len(files) - 20} more (see data_audit.json)"] if len(files) > 20 else [])
    return "\n".join(lines)


def summary_markdown(report: Dict[str, Any]) -> str:
    import jinja2

    from facemask import CARD_TEMPLATES

    template = jinja2.Template((CARD_TEMPLATES / "data_audit.md.j2").read_text(encoding="utf-8"))
    return template.render(report=report, categories=BAD_CATEGORIES).strip() + "\n"


def write_audit(report: Dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    run_folder.write_json(run_folder.AUDIT_JSON.path(output_dir), report)
    run_folder.AUDIT_MD.path(output_dir).write_text(summary_markdown(report), encoding="utf-8")


def check_audit(report: Dict[str, Any], output_dir: Path, main_process: bool = True) -> None:
    """A run's use of its audit: written into the run folder, its warnings logged, and a
    ConfigError (naming the full report) when it refuses the data."""
    if main_process:
        write_audit(report, output_dir)
    for warning in report["warnings"]:
        logger.warning("data audit: %s", warning)
    reason = refusal(report)
    if reason:
        raise ConfigError(f"{reason}\n(full report: {run_folder.AUDIT_JSON.path(output_dir)})")
