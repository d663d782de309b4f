"""Datasets (Hub, image folders or the drawn set) as their own splits, with labels matched by class
name across splits, and the class naming rules (which class is positive, which names are one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import datasets
import numpy as np

from facemask.config.schema import ConfigError, DataConfig
from facemask.data.synthetic import stored_synthetic_dataset

VALIDATION_ALIASES = ("validation", "valid", "val", "dev")


@dataclass
class PreparedData:
    splits: datasets.DatasetDict
    labels: List[str]
    image_column: str
    label_column: str
    source: str
    # The splits whose images come from a source of their own (data.validation_dir, data.test_dir,
    # data.extra_test): {split: {"type": "imagefolder" or the Hub id, "name": a public name}}. The
    # other splits are the training source's (its own splits, or carved out of train).
    split_sources: Dict[str, Dict[str, str]] = field(default_factory=dict)
    # {split: its images digest}, computed once by data preparation from one read of each image:
    # the preprocessing cache's key and run_info.json reuse it (see `images_digest`).
    digests: Dict[str, str] = field(default_factory=dict)
    # What data.exclude left out, per split (data/exclude.py apply_exclusion); None without a list.
    exclusion: Optional[Dict[str, Any]] = None
    # What data.corrections relabelled and added (data/corrections.py apply_corrections); None without a file.
    corrections: Optional[Dict[str, Any]] = None

    def images_digest(self, split: str) -> str:
        """The split's images digest (storage.images_digest): the one data preparation computed,
        else read now."""
        if split not in self.digests:
            from facemask.data.storage import images_digest

            self.digests[split] = images_digest(self.splits[split], self.image_column)
        return self.digests[split]

    @property
    def extra_sources(self) -> Dict[str, str]:
        """data.extra_test's splits: {NAME: the set's public name (a folder's name or a Hub id)}."""
        own = ("train", "validation", "test")
        return {split: record["name"] for split, record in self.split_sources.items() if split not in own}

    @property
    def id2label(self) -> Dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


def _folder(directory: str, key: str) -> Path:
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ConfigError(f"'data.{key}' is not a folder: {path} (expected one sub-folder per class)")
    return path


def load_image_folder(folder: Path, split: str, cache_dir: Optional[str] = None) -> datasets.Dataset:
    """One folder of class sub-folders as a labelled split (imagefolder, plus the label column it
    leaves out when every file sits in the same class folder)."""
    ds = datasets.load_dataset("imagefolder", data_files={split: str(folder / "**")}, split=split, cache_dir=cache_dir)
    if "label" in ds.column_names:
        return ds
    paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
    return ds.add_column("label", [Path(p["path"]).parent.name for p in paths])


SPLIT_FOLDERS = ("train", "test", *VALIDATION_ALIASES)


def has_split_folders(folder: Path) -> bool:
    """A dataset folder (train/, test/, ... inside) rather than an image folder of class sub-folders."""
    return any((folder / name).is_dir() for name in SPLIT_FOLDERS)


def split_folder(folder: Path, split: str) -> Optional[Path]:
    """A dataset folder's sub-folder of `split` (validation also under its aliases: valid, val, dev)."""
    names = VALIDATION_ALIASES if split in VALIDATION_ALIASES else (split,)
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def load_split_source(source: str, split: str, cache_dir: Optional[str] = None) -> tuple[datasets.Dataset, str]:
    """One split of SOURCE, and a name for it that holds no local path: an image folder of class
    sub-folders (its folder name), a dataset folder's SPLIT sub-folder, or a Hub dataset's SPLIT."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        if has_split_folders(folder):
            inside = split_folder(folder, split)
            if inside is None:
                found = ", ".join(n for n in SPLIT_FOLDERS if (folder / n).is_dir())
                raise ConfigError(f"{folder}: no '{split}' folder (it has {found})")
            folder, name = inside, f"{folder.name}/{inside.name}"
        else:
            name = folder.name
        if not any(p.is_file() and not p.name.startswith(".") for p in folder.rglob("*")):
            raise ConfigError(f"data folder {folder} holds no images: expected one sub-folder of images per class")
        return load_image_folder(folder, split, cache_dir), name
    try:
        return datasets.load_dataset(source, split=split, cache_dir=cache_dir), f"{source} ({split})"
    except ValueError as err:
        raise ConfigError(f"{source}: {str(err).splitlines()[0]}") from None
    except Exception as err:  # FileNotFoundError, DatasetNotFoundError, ConnectionError offline
        raise ConfigError(f"data not found: '{source}' is not a folder or a loadable Hub dataset "
                          f"({type(err).__name__}: {str(err).splitlines()[0]})") from None


def folder_source(folder: str) -> Dict[str, str]:
    """A split source record (PreparedData.split_sources) of an image folder: its own name, never its path."""
    return {"type": "imagefolder", "name": Path(folder).expanduser().resolve().name}


def extra_test_sets(cfg: DataConfig,
                    labels: List[str]) -> tuple[Dict[str, datasets.Dataset], Dict[str, Dict[str, str]]]:
    """data.extra_test's sets ({NAME: SOURCE[@SPLIT]}, the split defaulting to test), classes matched
    to the training classes by name as a test folder's are; and each one's source record (public name
    and type: imagefolder or the Hub id)."""
    sets, sources = {}, {}
    for name, source in cfg.extra_test.items():
        # A folder is taken whole even when its path holds an @; otherwise SOURCE@SPLIT picks a split.
        folder = Path(source).expanduser().is_dir()
        where, _, split = source.rpartition("@") if "@" in source and not folder else (source, "", "test")
        ds, public = load_split_source(where, split or "test", cfg.cache_dir)
        sources[name] = {"type": "imagefolder" if Path(where).expanduser().is_dir() else where, "name": public}
        _check_columns(ds, cfg, name)
        if len(ds) == 0:
            raise ConfigError(f"data.extra_test.{name}: {public} holds no images")
        sets[name] = _align_labels(ds, cfg.label_column, labels, name, public)
    return sets, sources


def with_label_ids(ds: datasets.Dataset, column: str, ids: List[int], names: List[str]) -> datasets.Dataset:
    """`ds` with its label column replaced by `ids` over the classes `names`."""
    return ds.remove_columns(column).add_column(column, ids, feature=datasets.ClassLabel(names=names))


def _load_raw(cfg: DataConfig, seed: int) -> tuple[datasets.DatasetDict, str]:
    if cfg.synthetic:
        from facemask.data.storage import cache_root

        root = cache_root(cfg.preprocess_dir)
        root.mkdir(parents=True, exist_ok=True)
        full = stored_synthetic_dataset(cfg.synthetic_num_images, cfg.synthetic_image_size, seed, root,
                                        cfg.synthetic_style, cfg.synthetic_occluders)
        style = ("" if cfg.synthetic_style == "studio" else f", {cfg.synthetic_style} style") + (
            f", occluders on {cfg.synthetic_occluders:.0%} of the faces without a mask" if cfg.synthetic_occluders else "")
        return (datasets.DatasetDict({"train": full}),
                f"synthetic ({cfg.synthetic_num_images} images, seed {seed}{style})")
    if cfg.train_dir is not None:
        # One load per folder: imagefolder infers labels from folder names only when every file
        # sits at the same depth, which separate train/validation folders need not share.
        folders = {"train": ("train_dir", cfg.train_dir), "validation": ("validation_dir", cfg.validation_dir),
                   "test": ("test_dir", cfg.test_dir)}
        raw = datasets.DatasetDict()
        for split, (key, folder) in folders.items():
            if folder:
                raw[split] = load_image_folder(_folder(folder, key), split, cfg.cache_dir)
        return raw, str(Path(cfg.train_dir).expanduser())
    raw = datasets.load_dataset(
        cfg.dataset_name, cfg.dataset_config, revision=cfg.dataset_revision, cache_dir=cfg.cache_dir
    )
    return raw, cfg.dataset_name


def _check_columns(ds: datasets.Dataset, cfg: DataConfig, split: str) -> None:
    for key in ("image_column", "label_column"):
        name = getattr(cfg, key)
        if name not in ds.column_names:
            raise ConfigError(
                f"'data.{key}' is '{name}' but the {split} split has no such column; "
                f"its columns are: {', '.join(ds.column_names)}"
            )


def _align_labels(ds: datasets.Dataset, column: str, names: List[str], split: str, source: str) -> datasets.Dataset:
    """Give `ds` the train split's label ids, matching classes by name, never by position."""
    feature = ds.features[column]
    own = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if own == names:
        return ds
    values = [own[i] for i in ds[column]] if own is not None else [str(v) for v in ds[column]]
    by_key = {label_key(name): k for k, name in enumerate(names)}
    unknown = sorted({v for v in values if label_key(v) not in by_key})
    if unknown:
        raise ConfigError(
            f"{source}: the {split} split has classes {unknown} that the train split lacks (train has {names}); "
            "use the same class folder names in every split (case, spaces, - and _ may differ)"
        )
    return with_label_ids(ds, column, [by_key[label_key(v)] for v in values], names)


def label_key(name: str) -> str:
    """What two class names must share to be the same class, in training and in evaluation alike:
    'With Mask', 'with-mask' and 'with_mask' are one class."""
    return re.sub(r"[\s_\-]+", "", str(name)).lower()


def load_sources(cfg: DataConfig, seed: int, labelled: bool = True) -> PreparedData:
    """The configured source's own splits (train, and validation/test where it has them), labels
    aligned by class name, images undecoded; `labelled=False` (pretraining) takes any number of
    classes, a folder of images without class folders being one. Carving the missing splits is `data/splits.py`'s job, after
    the images are inspected (duplicates must land on one side)."""
    raw, source = _load_raw(cfg, seed)
    for alias in VALIDATION_ALIASES[1:]:
        if alias in raw and "validation" not in raw:
            raw["validation"] = raw.pop(alias)
    if "train" not in raw:
        raise ConfigError(f"{source}: no 'train' split; splits found: {', '.join(raw)}")
    for split in raw:
        if not labelled and cfg.label_column not in raw[split].column_names:
            # Images alone (a Hub dataset of frames): one class, which pretraining does not use.
            raw[split] = raw[split].add_column(cfg.label_column, ["unlabelled"] * len(raw[split]))
        _check_columns(raw[split], cfg, split)

    train = raw["train"]
    if not isinstance(train.features[cfg.label_column], datasets.ClassLabel):
        train = train.class_encode_column(cfg.label_column)
    labels = list(train.features[cfg.label_column].names)
    keys = [label_key(name) for name in labels]
    clashes = sorted({name for name, key in zip(labels, keys) if keys.count(key) > 1})
    if clashes:
        raise ConfigError(f"{source}: classes {clashes} differ only in case, spaces, - or _, so they name one class: "
                          "merge their folders")
    splits = {"train": train}
    for split in ("validation", "test"):
        if split in raw:
            splits[split] = _align_labels(raw[split], cfg.label_column, labels, split, source)

    expected = cfg.expected_labels
    if labelled and len(labels) != expected:
        hint = "" if cfg.num_labels else " (set data.num_labels to train on another number of classes)"
        raise ConfigError(f"{source}: found {len(labels)} classes {labels}, expected {expected}{hint}")
    for split, ds in splits.items():
        if len(ds) == 0:
            raise ConfigError(f"{source}: the {split} split is empty")
    extra, sources = extra_test_sets(cfg, labels)
    own = {split: folder_source(folder) for split, folder in (("validation", cfg.validation_dir),
                                                              ("test", cfg.test_dir)) if folder and cfg.train_dir}
    # Images stay undecoded until the transform, which opens every file the same way (load_image).
    undecoded = datasets.Image(decode=False)
    ordered = {name: splits[name].cast_column(cfg.image_column, undecoded)
               for name in ("train", "validation", "test") if name in splits}
    ordered.update({name: ds.cast_column(cfg.image_column, undecoded) for name, ds in extra.items()})
    return PreparedData(datasets.DatasetDict(ordered), labels, cfg.image_column, cfg.label_column, source,
                        {**own, **sources})


def class_counts(ds: datasets.Dataset, label_column: str, labels: List[str]) -> Dict[str, int]:
    counts = np.bincount(np.asarray(ds[label_column]), minlength=len(labels))
    return {name: int(n) for name, n in zip(labels, counts)}
