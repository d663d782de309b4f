"""The data as a run sees it: the source's splits loaded, every image inspected, copies across
given splits resolved, the missing splits carved by duplicate group, and the audit report.

    load_sources -> inspect_splits -> duplicate pairs -> on_leak -> carve (group-aware) -> exclude -> report

The inspection comes before the split because the split needs its duplicate groups. The images an
exclude list names (data.exclude) leave after the carving, so the held-out splits a run carves are
the same with the list and without it: a cleaned run and its noisy one are compared on one test set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import datasets
import numpy as np

from facemask.config.schema import ConfigError, DataConfig
from facemask.data import audit
from facemask.data.duplicates import duplicate_pairs, groups, image_records
from facemask.data.exclude import ExcludeList, apply_exclusion, read_exclude_list
from facemask.data.inspection import inspect_splits
from facemask.data.seen import SeenImages, seen_members
from facemask.data.shortcuts import attribute_values, sharpness_edges
from facemask.data.sources import PreparedData, load_sources
from facemask.data.splits import achieved, carve, folds, leaked_copies, within
from facemask.data.storage import combined_digest, image_digests

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
                 labelled: bool = True, seen: Optional[SeenImages] = None) -> Prepared:
    """Load, inspect, resolve leaks, carve, leave out the listed images and audit; see the module
    docstring. `exclude`: data.exclude's list where the caller read it already. `labelled=False`:
    any number of classes (pretraining ignores them). `seen`: the images the pretraining run the
    model starts from used; test images among them are leaks (data.on_leak)."""
    if cfg.exclude is not None and exclude is None:
        exclude = read_exclude_list(cfg.exclude)  # a bad list stops before any image is read
    given = load_sources(cfg, seed, labelled)
    offsets, start = {}, 0
    for name, ds in given.splits.items():
        offsets[name] = start
        start += len(ds)
    label_ids = np.concatenate([np.asarray(ds[given.label_column], dtype=np.int64) for ds in given.splits.values()])
    split_of = [name for name, ds in given.splits.items() for _ in range(len(ds))]
    members = {name: list(range(offsets[name], offsets[name] + len(ds))) for name, ds in given.splits.items()}
    # Each image read once for its digest: the inspections' key, the carved splits' digests (the
    # cache key, run_info.json) are made from these.
    per_image = {name: image_digests(ds, given.image_column) for name, ds in given.splits.items()}
    given.digests = {name: combined_digest(found) for name, found in per_image.items()}
    per_image = np.concatenate(list(per_image.values()))

    if not cfg.audit:
        logger.warning("data.audit is false: held-out splits are carved without duplicate groups, and copies "
                       "across splits are neither found nor removed")
        if seen is not None:
            logger.warning("data.audit is false: the test images are not checked against the %d images pretraining "
                           "run %s used (the check uses the audit's content digests)", len(seen.digests), seen.run)
        carved = _carve_missing(members, label_ids.tolist(), [], cfg, seed)
        return Prepared(_select(given, members, split_of, offsets, cfg, seed, carved, per_image)[0])

    inspections = inspect_splits(given.splits, given.image_column, cfg.min_image_side, image_side, cfg.preprocess_dir,
                                 given.digests)
    records = image_records(given, inspections)
    exact, near = duplicate_pairs(records, cfg.near_duplicate_distance)
    pairs = [(p["i"], p["j"]) for p in exact + near]
    removed = leaked_copies(pairs, split_of, cfg.on_leak)
    bad = {k for k, r in enumerate(records) if r["inspection"].status != "ok"}
    excluded = set().union(*[set(v) for v in removed.values()]) | (bad if cfg.on_bad_image == "skip" else set())
    members = {name: [k for k in ks if k not in excluded] for name, ks in members.items()}
    for name, ks in members.items():
        if not ks:
            raise ConfigError(f"{given.source}: every image of the {name} split is unusable or a copy of an "
                              "evaluation image (see data_audit.json)")
    carved = _carve_missing(members, label_ids.tolist(), pairs, cfg, seed)
    exclusion = None
    if exclude is not None:
        members, exclusion = apply_exclusion(exclude, members, [r["inspection"].sha256 for r in records],
                                             audit.TRAINING_SIDE, cfg.exclude_test)
        for name, ks in members.items():
            if not ks:
                raise ConfigError(f"data.exclude: {exclude.name} lists every image of the {name} split")
    pretraining = None
    if seen is not None:
        members, pretraining = _pretraining_leaks(seen, members, records, cfg.on_leak)
    data, members = _select(given, members, split_of, offsets, cfg, seed, carved, per_image)
    data.exclusion = exclusion

    usable = [r["inspection"] for r in records
              if r["inspection"].status == "ok" and r["split"] in audit.SOURCE_SPLITS]
    edges = sharpness_edges([f.sharpness for f in usable])
    report = audit.build_report(data, records, members, exact, near, removed, cfg, seed, carved, image_side, edges,
                                pretraining)
    if exclusion is not None:
        report["exclude"] = exclusion
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
            cfg: DataConfig, seed: int, carved: Dict[str, Any],
            per_image: np.ndarray) -> tuple[PreparedData, Dict[str, List[int]]]:
    members["train"] = _subsample(members["train"], cfg.max_train_samples, seed)
    evaluated = [name for name in ("validation", "test", *cfg.extra_test) if name in members]
    for name in evaluated:
        members[name] = _subsample(members[name], cfg.max_eval_samples, seed)
    ordered = {name: members[name] for name in ("train", *evaluated)}
    splits = {}
    for name, ks in ordered.items():
        source = split_of[ks[0]] if ks else name
        ds = given.splits[source]
        rows = [k - offsets[source] for k in ks]
        splits[name] = ds if rows == list(range(len(ds))) else ds.select(rows)
        if len(splits[name]) == 0:
            raise ConfigError(f"{given.source}: the {name} split is empty")
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
