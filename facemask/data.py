"""Datasets (Hub, image folders or synthetic) as their own splits, image opening, and the per-image transforms."""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import random
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps

from .config import ConfigError, DataConfig
from . import synthetic


VALIDATION_ALIASES = ("validation", "valid", "val", "dev")


@dataclass
class PreparedData:
    splits: datasets.DatasetDict
    labels: List[str]
    image_column: str
    label_column: str
    source: str

    @property
    def id2label(self) -> Dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> Dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}


def _encoded_samples(seed: int, start: int, stop: int, size: int) -> List[tuple]:
    out = []
    for index in range(start, stop):
        image, label = synthetic.sample(seed, index, size)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        out.append((buffer.getvalue(), label))
    return out


def stored_synthetic_dataset(num_images: int, size: int, seed: int, root: Path) -> datasets.Dataset:
    """The drawn set, drawn once and kept under `root` by its parameters and the generator's source:
    a second run, or the other processes of a distributed one, load it instead of drawing again."""
    from .cache import unique_suffix

    folder = root / f"synthetic-{num_images}x{size}px-seed{seed}-{synthetic.generator_digest()}"
    if (folder / "dataset_info.json").is_file():
        try:
            return datasets.load_from_disk(str(folder))
        except (OSError, ValueError):
            pass  # damaged: draw it again below
    ds = synthetic_dataset(num_images, size, seed)
    staging = root / f".{folder.name}.{unique_suffix()}.partial"
    try:
        ds.save_to_disk(str(staging))
        staging.rename(folder)
    except OSError:
        pass  # another process stored it first, or the folder is read-only: the drawn set serves
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return ds


def synthetic_dataset(num_images: int, size: int, seed: int) -> datasets.Dataset:
    """The drawn set as PNG bytes, drawn on every core (samples depend only on seed and index)."""
    chunk = 250
    starts = range(0, num_images, chunk)
    workers = min(os.cpu_count() or 1, 8)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = pool.map(_encoded_samples, *zip(*[(seed, s, min(s + chunk, num_images), size) for s in starts]))
        samples = [item for part in parts for item in part]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=synthetic.CLASS_NAMES)})
    images = [{"bytes": data, "path": None} for data, _ in samples]
    return datasets.Dataset.from_dict({"image": images, "label": [label for _, label in samples]}, features=features)


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


def with_label_ids(ds: datasets.Dataset, column: str, ids: List[int], names: List[str]) -> datasets.Dataset:
    """`ds` with its label column replaced by `ids` over the classes `names`."""
    return ds.remove_columns(column).add_column(column, ids, feature=datasets.ClassLabel(names=names))


def _load_raw(cfg: DataConfig, seed: int) -> tuple[datasets.DatasetDict, str]:
    if cfg.synthetic:
        from .cache import cache_root

        root = cache_root(cfg.preprocess_dir)
        root.mkdir(parents=True, exist_ok=True)
        full = stored_synthetic_dataset(cfg.synthetic_num_images, cfg.synthetic_image_size, seed, root)
        return datasets.DatasetDict({"train": full}), f"synthetic ({cfg.synthetic_num_images} images, seed {seed})"
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


def load_sources(cfg: DataConfig, seed: int) -> PreparedData:
    """The configured source's own splits (train, and validation/test where it has them), labels
    aligned by class name, images undecoded. Carving the missing splits is `splits.py`'s job, after
    the images are inspected (duplicates must land on one side)."""
    raw, source = _load_raw(cfg, seed)
    for alias in VALIDATION_ALIASES[1:]:
        if alias in raw and "validation" not in raw:
            raw["validation"] = raw.pop(alias)
    if "train" not in raw:
        raise ConfigError(f"{source}: no 'train' split; splits found: {', '.join(raw)}")
    for split in raw:
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

    expected = cfg.num_labels or 2
    if len(labels) != expected:
        hint = "" if cfg.num_labels else " (set data.num_labels to train on another number of classes)"
        raise ConfigError(f"{source}: found {len(labels)} classes {labels}, expected {expected}{hint}")
    for split, ds in splits.items():
        if len(ds) == 0:
            raise ConfigError(f"{source}: the {split} split is empty")
    # Images stay undecoded until the transform, which opens every file the same way (load_image).
    undecoded = datasets.Image(decode=False)
    ordered = {name: splits[name].cast_column(cfg.image_column, undecoded)
               for name in ("train", "validation", "test") if name in splits}
    return PreparedData(datasets.DatasetDict(ordered), labels, cfg.image_column, cfg.label_column, source)


def class_counts(ds: datasets.Dataset, label_column: str, labels: List[str]) -> Dict[str, int]:
    counts = np.bincount(np.asarray(ds[label_column]), minlength=len(labels))
    return {name: int(n) for name, n in zip(labels, counts)}


_NEGATIVE = re.compile(r"(^|[^a-z])(no|non|not|without|un)($|[^a-z])|^no|without|unmask|nomask", re.I)


def resolve_positive_label(labels: List[str], configured: Optional[str]) -> int:
    """Index of the class scored as positive: the configured one, else the 'with mask' class."""
    if configured is not None:
        if configured not in labels:
            raise ConfigError(f"'data.positive_label' is '{configured}' but the classes are: {', '.join(labels)}")
        return labels.index(configured)
    masked = [i for i, name in enumerate(labels) if "mask" in name.lower() and not _NEGATIVE.search(name)]
    if len(masked) == 1:
        return masked[0]
    # Not a face-mask naming we recognise: follow scikit-learn's convention for binary labels.
    return len(labels) - 1


def load_image(item: Any, draft_side: Optional[int] = None) -> Image.Image:
    """Open a stored image (datasets' {"bytes", "path"}, a path or a PIL image) as upright RGB.

    JPEGs are decoded at the smallest DCT scale that keeps `draft_side` pixels, so a 40-megapixel
    photo costs a fraction of its full decode and memory.
    """
    if isinstance(item, Image.Image):
        image = item
    else:
        if isinstance(item, dict):
            source = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]
        else:
            source = item
        image = Image.open(source)
        if draft_side and image.format == "JPEG":
            image.draft("RGB", (draft_side, draft_side))
        image.load()
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Upright RGB, whatever the file's orientation tag and colour mode."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        high = arr.max() or 1.0
        return Image.fromarray((arr / high * 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def random_resized_crop_box(
    width: int, height: int, scale: List[float], ratio: List[float], rng: Optional[random.Random] = None
) -> tuple[int, int, int, int]:
    """A crop box (left, top, right, bottom) as torchvision's RandomResizedCrop samples it."""
    rng = rng or random
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    # Fallback: the largest centred crop within the ratio bounds.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def crop_and_flip(width: int, height: int, cfg: DataConfig,
                  rng: Optional[random.Random] = None) -> tuple[tuple[int, int, int, int], bool]:
    """One sample's training augmentation: its crop box and whether it is mirrored. Both input
    paths draw through here, so a key gives the same augmentation in either."""
    box = random_resized_crop_box(width, height, cfg.crop_scale, cfg.crop_ratio, rng)
    return box, (rng or random).random() < cfg.hflip_prob


INDEX_COLUMN = "__sample_index"


class AugmentationClock:
    """Keys each training sample's augmentation by (seed, epoch, sample index).

    Drawing crops and flips from the global torch RNG would tie them to everything else that
    consumes it (a resumed run creates one more DataLoader iterator, which draws a seed), so a
    resumed run would see other crops than an uninterrupted one. A Trainer callback sets `epoch`.

    The epoch lives in a shared-memory tensor: DataLoader workers hold copies of the clock (forked,
    or pickled, which shares the storage), and persistent workers outlive the epoch they started
    in, so a plain attribute set in the main process would leave them drawing epoch 0's crops.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.fill_(int(value))

    def generator(self, index: int) -> random.Random:
        # Python's generator: seeding and a handful of draws cost ~5 us, a torch.Generator's ~30.
        return random.Random(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % 2**63)


def make_transforms(processor: Any, cfg: DataConfig, image_column: str, label_column: str,
                    clock: Optional[AugmentationClock] = None) -> tuple[Callable, Callable]:
    """Batch transforms for `Dataset.set_transform`: (train with augmentation, evaluation).

    With a clock, the train split must carry INDEX_COLUMN; without one, Python's global RNG is used.
    """
    from .modeling import processor_image_size

    # Twice the model's input keeps a random crop of half the area at full resolution.
    draft_side = 2 * processor_image_size(processor)

    def _encode(images: List[Image.Image], batch: Dict[str, List[Any]]) -> Dict[str, Any]:
        pixel_values = processor(images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    def train_transform(batch: Dict[str, List[Any]]) -> Dict[str, Any]:
        images = []
        indices = batch.get(INDEX_COLUMN) or [None] * len(batch[image_column])
        for item, index in zip(batch[image_column], indices):
            image = load_image(item, draft_side)
            if cfg.augment:
                gen = clock.generator(index) if clock is not None and index is not None else None
                box, flip = crop_and_flip(image.width, image.height, cfg, gen)
                image = image.crop(box)
                if flip:
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
            images.append(image)
        return _encode(images, batch)

    def eval_transform(batch: Dict[str, List[Any]]) -> Dict[str, Any]:
        return _encode([load_image(item, draft_side) for item in batch[image_column]], batch)

    return train_transform, eval_transform


def collate(examples: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
