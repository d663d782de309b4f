"""The data a saved model is evaluated on: an image folder, a Hub dataset, the drawn set, or a
split a training config carves; its classes matched to the model's labels by name."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import datasets

from facemask.config.loading import load_config
from facemask.config.schema import ConfigError, DataConfig
from facemask.data.inspection import Inspection, inspect_splits, split_digest
from facemask.data.prepare import prepare_data
from facemask.data.seen import read_seen_images
from facemask.data.shortcuts import attribute_values, sharpness_edges
from facemask.data.sources import PreparedData, class_counts, label_key, load_split_source, with_label_ids
from facemask.data.synthetic import synthetic_dataset
from facemask.run_folder import EXPERIMENT, RUN_INFO, read_json

logger = logging.getLogger("facemask")


def match_labels(data_labels: List[str], id2label: Dict[int, str]) -> Dict[int, int]:
    """Map data label ids to model label ids by class name (case, spaces, - and _ ignored)."""
    model_labels = [id2label[i] for i in sorted(id2label)]
    if len(model_labels) != len(data_labels):
        raise ConfigError(
            f"the model has {len(model_labels)} labels ({', '.join(model_labels)}) but the data has "
            f"{len(data_labels)} classes ({', '.join(data_labels)}): evaluate on data with the model's classes"
        )
    by_name = {label_key(name): i for i, name in enumerate(model_labels)}
    mapping = {i: by_name.get(label_key(name)) for i, name in enumerate(data_labels)}
    unmatched = [data_labels[i] for i, j in mapping.items() if j is None]
    if unmatched or len(set(mapping.values())) != len(mapping):
        raise ConfigError(
            f"cannot match the data's classes to the model's labels by name: data has {data_labels}, model has "
            f"{model_labels}; unmatched: {unmatched or 'two classes map to one label'}. Rename the class folders "
            "to the model's label names"
        )
    return mapping  # type: ignore[return-value]


@dataclass
class EvalData:
    dataset: datasets.Dataset
    labels: List[str]
    image_column: str
    label_column: str
    source: str
    split: str
    public_name: Optional[str] = None  # the source as a published file may name it: no local path


@dataclass
class SplitData:
    """A split to evaluate: its rows (images undecoded) and what the evaluation reads beside them."""

    dataset: datasets.Dataset
    labels: List[str]
    image_column: str
    attributes: Optional[List[Dict[str, str]]] = None  # per image, for the slices (data/shortcuts.py)
    inspections: Optional[List[Inspection]] = None  # per image, for the shortcut test



def load_eval_data(data: str, split: str, num_images: int = 1000, image_size: int = 128, seed: int = 0,
                   image_column: str = "image", label_column: str = "label") -> EvalData:
    """DATA as an image folder, `synthetic`, or a Hub dataset id (its SPLIT)."""
    if data == "synthetic":
        ds = synthetic_dataset(num_images, image_size, seed)
        source = public = f"synthetic ({num_images} images, seed {seed})"
    else:
        ds, public = load_split_source(data, split)
        source = data
    for column in (image_column, label_column):
        if column not in ds.column_names:
            raise ConfigError(f"{source}: no column '{column}'; its columns are: {', '.join(ds.column_names)}")
    if not isinstance(ds.features[label_column], datasets.ClassLabel):
        ds = ds.class_encode_column(label_column)
    if len(ds) == 0:
        raise ConfigError(f"{source}: the {split} split is empty")
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return EvalData(ds, list(ds.features[label_column].names), image_column, label_column, source, split, public)


def from_prepared(prepared: PreparedData, split: str) -> EvalData:
    if split not in prepared.splits:
        raise ConfigError(f"{prepared.source}: no '{split}' split; splits are: {', '.join(prepared.splits)}")
    return EvalData(prepared.splits[split], prepared.labels, prepared.image_column, prepared.label_column,
                    prepared.source, split, prepared.extra_sources.get(split))


def remap_labels(data: EvalData, mapping: Dict[int, int], id2label: Dict[int, str]) -> EvalData:
    """The dataset with label ids (and ClassLabel names) of the model."""
    column = data.label_column
    ids = [mapping[i] for i in data.dataset[column]]
    names = [id2label[i] for i in sorted(id2label)]
    return EvalData(with_label_ids(data.dataset, column, ids, names), names, data.image_column, column, data.source,
                    data.split, data.public_name)


def sample_names(ds: datasets.Dataset, image_column: str) -> List[str]:
    """The file each sample came from, or its index for images held in memory."""
    raw = ds.cast_column(image_column, datasets.Image(decode=False))[image_column]
    return [item.get("path") or str(i) if isinstance(item, dict) else str(i) for i, item in enumerate(raw)]


def check_carved_split(run_dir: Path, config: str, seed: int, split: str, found: EvalData,
                       inspections: List[Inspection]) -> None:
    """The split CONFIG carves must be the one the run recorded under that name in run_info.json:
    another seed (every `repeat` run), fold or data override carves other images, some of which the
    model trained on. Runs from before the per-split digests are held to their seed and the split's
    size and class counts, with a warning that the images themselves were not checked."""
    info_path = RUN_INFO.path(run_dir)
    if not info_path.is_file() and RUN_INFO.path(run_dir.parent).is_file() and run_dir.name.startswith("checkpoint-"):
        run_dir, info_path = run_dir.parent, RUN_INFO.path(run_dir.parent)  # a checkpoint: its run's record
    if not info_path.is_file():
        logger.warning("%s records no run (no %s): the %s split %s carves is not checked against its training "
                       "images", run_dir, info_path.name, split, config)
        return
    info = read_json(info_path)
    recorded = (info.get("data") or {}).get("splits") or {}
    fix = f"evaluate it with the run's own config (--config {EXPERIMENT.path(run_dir)})"
    labels = found.dataset[found.label_column]
    if any("content_sha256" in s for s in recorded.values()):
        if split not in recorded:
            logger.warning("%s has no %s split: the one %s carves is not checked against its training images",
                           run_dir, split, config)
        elif split_digest(inspections, labels, found.labels) != recorded[split]["content_sha256"]:
            raise ConfigError(f"{config} carves another {split} split ({len(labels)} images) than {run_dir} was "
                              f"trained with ({recorded[split]['num_images']} images; {info_path.name} records its "
                              "digest): another seed, fold or data setting, so the model may have trained on some "
                              f"of these images. To score the run, {fix}; to score other data, give it with --data")
        return
    carved = {"seed": seed, "num_images": len(labels),
              "class_counts": class_counts(found.dataset, found.label_column, found.labels)}
    known = {"seed": info.get("seed"),
             **{key: (recorded.get(split) or {}).get(key) for key in ("num_images", "class_counts")}}
    differ = [k for k, v in known.items() if v is not None and v != carved[k]]
    if differ:
        raise ConfigError(f"{config} carves another {split} split than {run_dir} was trained with (its "
                          f"{', '.join(differ)} differ from {info_path.name}'s), so the model may have trained on "
                          f"some of these images. To score the run, {fix}")
    logger.warning("%s records no digest of its splits (trained before they were recorded, or with data.audit=false): "
                   "the %s split %s carves has the run's seed and size, but its images could not be checked",
                   info_path, split, config)


def evaluation_split(split: str, id2label: Dict[int, str], image_side: int, data: Optional[str] = None,
                     config: Optional[str] = None, num_images: int = 1000, image_size: int = 128, seed: int = 1,
                     cache_dir: Optional[str] = None, run_dir: Optional[Path] = None) -> Tuple[EvalData, SplitData]:
    """The split evaluate.py evaluates, its classes matched to the model's labels by name: DATA's
    split, or the split a training config carves (copies removed as training removed them), with
    each image's inspection and attributes for the slices and the shortcut test. With a config and
    a run folder, the carved split is checked against the run's (check_carved_split)."""
    if config:
        cfg = load_config(config)
        # A run fine-tuned from a pretraining run left the test images that run used out: the same here.
        prepared = prepare_data(cfg.data, cfg.seed, image_side,
                                seen=read_seen_images(cfg.model.name_or_path, cfg.model.revision))
        found = from_prepared(prepared.data, split)
        inspections, attributes = prepared.inspections.get(split), prepared.attributes.get(split)
        min_side = cfg.data.min_image_side
    else:
        found = load_eval_data(data, split, num_images, image_size, seed)
        inspections, attributes, min_side = None, None, DataConfig().min_image_side
    if inspections is None:
        inspections = inspect_splits({split: found.dataset}, found.image_column, min_side, image_side,
                                     cache_dir)[split]
        edges = sharpness_edges([f.sharpness for f in inspections])
        attributes = [attribute_values(f, edges) for f in inspections]
    found = remap_labels(found, match_labels(found.labels, id2label), id2label)
    if config and run_dir is not None:
        check_carved_split(run_dir, config, cfg.seed, split, found, inspections)
    return found, SplitData(found.dataset, found.labels, found.image_column, attributes, inspections)
