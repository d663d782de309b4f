"""The data a saved model is evaluated on: an image folder, a Hub dataset, the drawn set, or a
split a training config carves; its classes matched to the model's labels by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import datasets

from facemask.config.schema import ConfigError
from facemask.data.sources import PreparedData, label_key, load_image_folder, with_label_ids
from facemask.data.synthetic import synthetic_dataset


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


def _has_split_folders(folder: Path) -> bool:
    """A dataset folder (train/, test/, ... inside) rather than an image folder of class sub-folders."""
    return any((folder / name).is_dir() for name in ("train", "test", "validation", "valid", "val"))


def load_eval_data(data: str, split: str, num_images: int = 1000, image_size: int = 128, seed: int = 0,
                   image_column: str = "image", label_column: str = "label") -> EvalData:
    """DATA as an image folder, `synthetic`, or a Hub dataset id (its SPLIT)."""
    if data == "synthetic":
        ds = synthetic_dataset(num_images, image_size, seed)
        source = f"synthetic ({num_images} images, seed {seed})"
    elif Path(data).expanduser().is_dir() and not _has_split_folders(Path(data).expanduser()):
        folder = Path(data).expanduser()
        if not any(p.is_file() and not p.name.startswith(".") for p in folder.rglob("*")):
            raise ConfigError(f"data folder {folder} holds no images: expected one sub-folder of images per class")
        ds = load_image_folder(folder, split)
        source = str(folder)
    else:
        try:
            ds = datasets.load_dataset(data, split=split)
        except ValueError as err:
            raise ConfigError(f"{data}: {str(err).splitlines()[0]}") from None
        except Exception as err:  # FileNotFoundError, DatasetNotFoundError, ConnectionError offline
            raise ConfigError(f"data not found: '{data}' is not a folder, 'synthetic' or a loadable Hub dataset "
                              f"({type(err).__name__}: {str(err).splitlines()[0]})") from None
        source = data
    for column in (image_column, label_column):
        if column not in ds.column_names:
            raise ConfigError(f"{source}: no column '{column}'; its columns are: {', '.join(ds.column_names)}")
    if not isinstance(ds.features[label_column], datasets.ClassLabel):
        ds = ds.class_encode_column(label_column)
    if len(ds) == 0:
        raise ConfigError(f"{source}: the {split} split is empty")
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    return EvalData(ds, list(ds.features[label_column].names), image_column, label_column, source, split)


def from_prepared(prepared: PreparedData, split: str) -> EvalData:
    if split not in prepared.splits:
        raise ConfigError(f"{prepared.source}: no '{split}' split; splits are: {', '.join(prepared.splits)}")
    return EvalData(prepared.splits[split], prepared.labels, prepared.image_column, prepared.label_column,
                    prepared.source, split)


def remap_labels(data: EvalData, mapping: Dict[int, int], id2label: Dict[int, str]) -> EvalData:
    """The dataset with label ids (and ClassLabel names) of the model."""
    column = data.label_column
    ids = [mapping[i] for i in data.dataset[column]]
    names = [id2label[i] for i in sorted(id2label)]
    return EvalData(with_label_ids(data.dataset, column, ids, names), names, data.image_column, column, data.source,
                    data.split)


def sample_names(ds: datasets.Dataset, image_column: str) -> List[str]:
    """The file each sample came from, or its index for images held in memory."""
    raw = ds.cast_column(image_column, datasets.Image(decode=False))[image_column]
    return [item.get("path") or str(i) if isinstance(item, dict) else str(i) for i, item in enumerate(raw)]
