"""The data as a run sees it: the source's splits loaded, every image inspected, copies across
given splits resolved, the missing splits carved by duplicate group, and the audit report.

    load_sources -> inspect_splits -> corrections' new images -> duplicate pairs -> on_leak
        -> carve (group-aware) -> new images join train -> exclude -> relabel -> report

The inspection comes before the split because the split needs its duplicate groups. The images an
exclude list names (data.exclude) leave after the carving, so the held-out splits a run carves are
the same with the list and without it: a cleaned run and its noisy one are compared on one test set.
A corrections file (data.corrections) keeps that property: its labels are applied after the
carving (which stratifies by the given labels), and its new images (rows whose digest is in no
split) are inspected with the data, so their copies of validation and test images are leaks like
any other (data.on_leak), but stay out of the carving and join train after it.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import datasets
import numpy as np

from facemask.config.schema import ConfigError, DataConfig
from facemask.data import audit
from facemask.data.corrections import Corrections, apply_corrections, new_images, read_corrections
from facemask.data.corrections import label_ids as label_ids_of
from facemask.data.duplicates import duplicate_pairs, groups, image_records
from facemask.data.exclude import ExcludeList, apply_exclusion, read_exclude_list
from facemask.data.inspection import inspect_splits
from facemask.data.seen import SeenImages, seen_members
from facemask.data.shortcuts import attribute_values, sharpness_edges
from facemask.data.sources import PreparedData, load_sources, with_label_ids
from facemask.data.splits import achieved, carve, folds, leaked_copies, within
from facemask.data.storage import combined_digest, image_digests

# The new images of a corrections file, held as a split of their own until they join train.
ADDED = "data.corrections"

logger = logging.getLogger("facemask")


@dataclass
class Prepared:
    data: PreparedData
    # The audit report (data_audit.json); None with data.audit=false.
    report: Optional[Dict[str, Any]] = None
    # Per final split, each row's audited attribute values (for slice metrics and shortcut tests).
    attributes: Dict[str, List[Dict[str, str]]] = field(default_factory=dict)
    # Per final split, each row's inspection (sizes and sharpness for the shortcut tests).
    inspections: Dict[str, List[Any]] = field(default_factory=dict)
    # Counts for the results files: train_bad_images_skipped, train_leaked_images_removed, ...
    removed: Dict[str, int] = field(default_factory=dict)


def _subsample(members: List[int], limit: Optional[int], seed: int) -> List[int]:
    if limit is None or limit >= len(members):
        return members
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(members, size=limit, replace=False).tolist())


def _carve_missing(members: Dict[str, List[int]], labels: List[int], pairs: List[tuple], cfg: DataConfig,
                   seed: int) -> Dict[str, Any]:
    """Validation/test the source lacks, carved out of train (test first, so validation_split stays
    a fraction of the whole); returns what was carved, for the report."""
    train = members["train"]
    position = {k: i for i, k in enumerate(train)}
    local = [(position[a], position[b]) for a, b in within(pairs, set(train))]
    group = groups(len(train), local)
    sizes = np.bincount(group)
    carved: Dict[str, Any] = {"duplicate_groups": int((sizes > 1).sum()), "images_in_groups": int(sizes[sizes > 1].sum()),
                              "largest_group": int(sizes.max()) if len(sizes) else 0}
    plan = []
    if "test" not in members and cfg.test_split > 0:
        plan.append(("test", cfg.test_split))
    if cfg.cv_folds is not None:
        if "validation" in members:
            raise ConfigError("cross-validation carves validation out of train, but the source has its own "
                              "validation split (data.validation_dir or the dataset's): drop it to use folds")
        plan.append(("validation", None))
    elif "validation" not in members and cfg.validation_split > 0:
        taken = cfg.test_split if "test" in dict(plan) else 0.0
        plan.append(("validation", cfg.validation_split / (1.0 - taken)))
    keep = np.arange(len(train))
    for name, fraction in plan:
        labels_kept = [labels[train[i]] for i in keep]
        if fraction is None:  # the fold cv_fold of cv_folds, over what test left
            held = np.flatnonzero(folds(labels_kept, group[keep], cfg.cv_folds, seed) == cfg.cv_fold)
        else:
            held = carve(labels_kept, group[keep], fraction, seed)
        members[name] = [train[i] for i in keep[held]]
        keep = np.delete(keep, held)
    members["train"] = [train[i] for i in keep]
    carved["splits"] = [name for name, _ in plan]
    if cfg.cv_folds is not None:
        carved["cross_validation"] = {"folds": cfg.cv_folds, "fold": cfg.cv_fold}
    return carved


def prepare_data(cfg: DataConfig, seed: int, image_side: int = 224, exclude: Optional[ExcludeList] = None,
                 labelled: bool = True, seen: Optional[SeenImages] = None,
                 corrections: Optional[Corrections] = None) -> Prepared:
    """Load, inspect, resolve leaks, carve, leave out the listed images, correct labels and audit;
    see the module docstring. `exclude`, `corrections`: data.exclude's list and data.corrections'
    file where the caller read them already. `labelled=False`: any number of classes (pretraining
    ignores them). `seen`: the images the pretraining run the model starts from used; test images
    among them are leaks (data.on_leak)."""
    # A bad list or corrections file stops before any image is read.
    if cfg.exclude is not None and exclude is None:
        exclude = read_exclude_list(cfg.exclude)
    if cfg.corrections is not None and corrections is None:
        corrections = read_corrections(cfg.corrections)
    if corrections is not None and not cfg.audit:
        raise ConfigError("'data.corrections' needs the audit: images are matched to the file by the content digests "
                          "it takes; set data.audit=true (or remove data.corrections)")
    given = load_sources(cfg, seed, labelled)
    if corrections is not None:
        label_ids_of(corrections, given.labels)  # a label that is no class stops before any image is read
    # Each image read once for its digest: the inspections' key, the carved splits' digests (the
    # cache key, run_info.json) are made from these.
    per_image = {name: image_digests(ds, given.image_column) for name, ds in given.splits.items()}
    given.digests = {name: combined_digest(found) for name, found in per_image.items()}

    if not cfg.audit:
        logger.warning("data.audit is false: held-out splits are carved without duplicate groups, and copies "
                       "across splits are neither found nor removed")
        if seen is not None:
            logger.warning("data.audit is false: the test images are not checked against the %d images pretraining "
                           "run %s used (the check uses the audit's content digests)", len(seen.digests), seen.run)
        offsets, split_of, members, label_ids = _positions(given)
        carved = _carve_missing(members, label_ids.tolist(), [], cfg, seed)
        return Prepared(_select(given, members, split_of, offsets, cfg, seed, carved,
                                np.concatenate(list(per_image.values())))[0])

    inspections = inspect_splits(given.splits, given.image_column, cfg.min_image_side, image_side, cfg.preprocess_dir,
                                 given.digests)
    if corrections is not None:
        known = {found.sha256 for split in inspections.values() for found in split if found.sha256}
        added = _added_split(given, corrections, known)
        if added is not None:
            # Inspected as a split of their own: the data's own inspections stay those kept on disk.
            per_image[ADDED] = image_digests(added, given.image_column)
            given.digests[ADDED] = combined_digest(per_image[ADDED])
            given.splits[ADDED] = added
            inspections.update(inspect_splits({ADDED: added}, given.image_column, cfg.min_image_side, image_side,
                                              cfg.preprocess_dir, {ADDED: given.digests[ADDED]}))
    per_image = np.concatenate(list(per_image.values()))
    offsets, split_of, members, label_ids = _positions(given)
    new = members.pop(ADDED, [])
    # The new images are train images from the start: a copy of a validation or test image is a leak.
    role = ["train" if name == ADDED else name for name in split_of]
    records = image_records(given, inspections)
    exact, near = duplicate_pairs(records, cfg.near_duplicate_distance)
    pairs = [(p["i"], p["j"]) for p in exact + near]
    removed = leaked_copies(pairs, role, cfg.on_leak)
    bad = {k for k, r in enumerate(records) if r["inspection"].status != "ok"}
    excluded = set().union(*[set(v) for v in removed.values()]) | (bad if cfg.on_bad_image == "skip" else set())
    members = {name: [k for k in ks if k not in excluded] for name, ks in members.items()}
    for name, ks in members.items():
        if not ks:
            raise ConfigError(f"{given.source}: every image of the {name} split is unusable or a copy of an "
                              "evaluation image (see data_audit.json)")
    carved = _carve_missing(members, label_ids.tolist(), pairs, cfg, seed)
    if new:
        members["train"] = members["train"] + _carved_leaks(new, members, pairs, removed, excluded, cfg.on_leak)
    exclusion = None
    digest_of = [r["inspection"].sha256 for r in records]
    if exclude is not None:
        members, exclusion = apply_exclusion(exclude, members, digest_of, audit.TRAINING_SIDE, cfg.exclude_test)
        for name, ks in members.items():
            if not ks:
                raise ConfigError(f"data.exclude: {exclude.name} lists every image of the {name} split")
    correction = relabelled = None
    if corrections is not None:
        relabelled, correction = apply_corrections(corrections, members, digest_of, label_ids.tolist(), given.labels,
                                                   audit.TRAINING_SIDE, new)
        for k, label in relabelled.items():
            records[k]["label"] = given.labels[label]  # the audit judges the labels training reads
    pretraining = None
    if seen is not None:
        members, pretraining = _pretraining_leaks(seen, members, records, cfg.on_leak)
    data, members = _select(given, members, split_of, offsets, cfg, seed, carved, per_image, relabelled)
    data.exclusion = exclusion
    data.corrections = correction

    usable = [r["inspection"] for r in records
              if r["inspection"].status == "ok" and r["split"] in audit.SOURCE_SPLITS]
    edges = sharpness_edges([f.sharpness for f in usable])
    report = audit.build_report(data, records, members, exact, near, removed, cfg, seed, carved, image_side, edges,
                                pretraining)
    if exclusion is not None:
        report["exclude"] = exclusion
    if correction is not None:
        report["corrections"] = correction
    attributes = {name: [attribute_values(records[k]["inspection"], edges) for k in ks] for name, ks in members.items()}
    found = {name: [records[k]["inspection"] for k in ks] for name, ks in members.items()}
    counts = {}
    if cfg.on_bad_image == "skip":
        counts["train_bad_images_skipped"] = len(bad)
    for name, copies in removed.items():
        counts[f"{name}_leaked_images_removed"] = len(copies)
    if cfg.on_leak == "drop":
        counts.setdefault("train_leaked_images_removed", 0)
    if pretraining is not None and cfg.on_leak == "drop":
        for name, files in pretraining["leaks"].items():
            counts[f"{name}_pretraining_images_removed"] = len(files)
    return Prepared(data, report, attributes, found, counts)


def _positions(given: PreparedData) -> tuple[Dict[str, int], List[str], Dict[str, List[int]], np.ndarray]:
    """Every image of the given splits by one index, in split order: each split's first index, each
    image's split, each split's images, each image's class id."""
    offsets, start = {}, 0
    for name, ds in given.splits.items():
        offsets[name] = start
        start += len(ds)
    label_ids = np.concatenate([np.asarray(ds[given.label_column], dtype=np.int64) for ds in given.splits.values()])
    split_of = [name for name, ds in given.splits.items() for _ in range(len(ds))]
    members = {name: list(range(offsets[name], offsets[name] + len(ds))) for name, ds in given.splits.items()}
    return offsets, split_of, members, label_ids


def _added_split(given: PreparedData, corrections: Corrections, known: set) -> Optional[datasets.Dataset]:
    """The corrections' new images (rows whose digest no image of the data has) as a split with the
    train split's columns, each labelled as decided; None when there is none."""
    found = new_images(corrections, known)
    if not found:
        return None
    decided = label_ids_of(corrections, given.labels)
    train = given.splits["train"]
    features = train.features
    columns = {given.image_column: [{"bytes": None, "path": str(path)} for _, path in found],
               given.label_column: [decided[row.sha256] for row, _ in found]}
    # Columns of the source beyond image and label (a Hub dataset's) are empty for the new images.
    columns.update({name: [None] * len(found) for name in train.column_names if name not in columns})
    return datasets.Dataset.from_dict(columns, features=features)


def _carved_leaks(new: List[int], members: Dict[str, List[int]], pairs: List[tuple],
                  removed: Dict[str, Dict[int, int]], excluded: set, on_leak: str) -> List[int]:
    """The new images that join train: those left after on_leak, and, with on_leak=drop, without
    the copies of the images the carving just moved to validation or test (which leak resolution,
    run before the carving, saw as train images). A dropped copy is recorded in `removed`."""
    held = {k for name, ks in members.items() if name != "train" for k in ks}
    joining = [k for k in new if k not in excluded]
    if on_leak != "drop":
        return joining  # error: the audit's refusal names them; keep: the card warns
    dropped = {}
    for a, b in pairs:
        for k, other in ((a, b), (b, a)):
            if k in joining and other in held:
                dropped.setdefault(k, other)
    removed.setdefault("train", {}).update(dropped)
    return [k for k in joining if k not in dropped]


def _pretraining_leaks(seen: SeenImages, members: Dict[str, List[int]], records: List[Dict[str, Any]],
                       on_leak: str) -> tuple[Dict[str, List[int]], Dict[str, Any]]:
    """The evaluation images the pretraining used, per split, for the audit; with on_leak=drop they
    leave their test set (the training side may share images with pretraining: that is its purpose)."""
    found = seen_members(seen, members, [r["inspection"].sha256 for r in records],
                         [name for name in members if name not in audit.TRAINING_SIDE])
    record = {"run": seen.run, "images": len(seen.digests), "on_leak": on_leak,
              "leaks": {name: [records[k]["file"] for k in ks] for name, ks in found.items() if ks}}
    if on_leak == "drop":
        dropped = {name: set(ks) for name, ks in found.items()}
        members = {name: [k for k in ks if k not in dropped.get(name, ())] for name, ks in members.items()}
        for name, ks in members.items():
            if not ks:
                raise ConfigError(f"every image of the {name} split was used by pretraining run {seen.run}: "
                                  "evaluate on images it did not see")
    return members, record


def _select(given: PreparedData, members: Dict[str, List[int]], split_of: List[str], offsets: Dict[str, int],
            cfg: DataConfig, seed: int, carved: Dict[str, Any], per_image: np.ndarray,
            relabelled: Optional[Dict[int, int]] = None) -> tuple[PreparedData, Dict[str, List[int]]]:
    members["train"] = _subsample(members["train"], cfg.max_train_samples, seed)
    evaluated = [name for name in ("validation", "test", *cfg.extra_test) if name in members]
    for name in evaluated:
        members[name] = _subsample(members[name], cfg.max_eval_samples, seed)
    ordered = {name: members[name] for name in ("train", *evaluated)}
    splits = {}
    for name, ks in ordered.items():
        if not ks:
            raise ConfigError(f"{given.source}: the {name} split is empty")
        # Runs of images from one given split, in order (train ends with a corrections file's new images).
        parts = []
        for source, run in itertools.groupby(ks, key=lambda k: split_of[k]):
            ds, rows = given.splits[source], [k - offsets[source] for k in run]
            parts.append(ds if rows == list(range(len(ds))) else ds.select(rows))
        splits[name] = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        if relabelled and any(k in relabelled for k in ks):
            ids = [relabelled.get(k, label) for k, label in zip(ks, splits[name][given.label_column])]
            splits[name] = with_label_ids(splits[name], given.label_column, ids, given.labels)
    sizes = {name: len(ds) for name, ds in splits.items()}
    if carved.get("splits"):
        carved["achieved"] = achieved(sizes)
        logger.info("carved %s out of train by duplicate group (%d groups of copies, %d images, kept on one side): %s",
                    " and ".join(carved["splits"]), carved["duplicate_groups"], carved["images_in_groups"],
                    ", ".join(f"{k} {v['images']} ({100 * v['fraction']:.1f}%)" for k, v in carved["achieved"].items()))
    # A split carved out of another keeps that one's source (none of its own when out of train).
    came_from = {name: split_of[ks[0]] for name, ks in ordered.items() if ks}
    own = {name: given.split_sources[src] for name, src in came_from.items() if src in given.split_sources}
    digests = {name: combined_digest(per_image[np.asarray(ks, dtype=np.int64)]) for name, ks in ordered.items()}
    data = PreparedData(datasets.DatasetDict(splits), given.labels, given.image_column, given.label_column,
                        given.source, split_sources=own, digests=digests)
    return data, ordered
