"""Decode each image once: a preprocessing cache of uint8 pixels, built with `datasets.map`.

Training images are stored square at a little above the model's input side: the part of the image
the processor keeps (pipeline.processor.input_region: the whole image, or a centre crop's source),
squashed, with that part's size; random crops are taken from them on whole batches, see
pipeline/augment.py. Evaluation images are stored exactly as the image processor resizes (and
centre-crops) them, so only the normalisation is left per batch.
A cache lives in a folder named by its fingerprint: the images' bytes (or path, size and mtime),
the resize settings and the decoder's version. Any change to those names another folder, so a
changed image or setting rebuilds, and an unchanged one is reused across runs and epochs.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import datasets
import numpy as np
import PIL
import torch
from PIL import Image

from facemask.data.images import load_image
from facemask.data.storage import (Damaged, check_checksums, checksum, discard, first_line,
                                   images_digest, mark_used, require_space, staged)
from facemask.pipeline.geometry import region_pixels
from facemask.processes import forks_die_with_this_process
from facemask.progress import datasets_lines

logger = logging.getLogger("facemask")

# Bump when the stored representation changes, so old caches are never read as new ones.
# 3: cache.json records each file's bytes and rows, checked on every open; 4: and its checksum
# 5: every format (not only JPEG) shrunk by a whole factor after decoding (data/images.shrink)
CACHE_VERSION = 5
# Training images are stored at this multiple of the model's side: 256 px for a 224 px model.
DEFAULT_SCALE = 8 / 7
_MIN_IMAGES_PER_PROCESS = 500


@dataclass(frozen=True)
class CacheSpec:
    """What a cache stores: 'train' (square at `side`, for random crops) or 'eval' (the processor's output)."""

    mode: str
    side: int
    resample: int
    processor_settings: str

    @classmethod
    def for_split(cls, processor: Any, train: bool, scale: float = DEFAULT_SCALE) -> "CacheSpec":
        from facemask.pipeline.processor import processor_image_size

        size = processor_image_size(processor)
        keys = ("size", "do_resize", "resample", "do_center_crop", "crop_size", "do_convert_rgb")
        fields = {k: _plain(getattr(processor, k, None)) for k in keys}
        if fields["do_center_crop"]:
            # Such caches hold the centre crop's region (training) and its size; older ones held the
            # squashed image. Other processors' region is the whole image, as before.
            fields["region"] = "centre crop"
        settings = json.dumps(fields, sort_keys=True)
        resample = int(getattr(processor, "resample", None) or Image.Resampling.BILINEAR)
        if train:
            return cls("train", max(size, int(round(size * scale))), resample, settings)
        return cls("eval", size, resample, settings)


def _plain(value: Any) -> Any:
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def cache_key(ds: datasets.Dataset, image_column: str, spec: CacheSpec, digest: Optional[str] = None) -> str:
    """The cache's name: `digest` is the split's images digest where data preparation computed it
    (PreparedData.images_digest), else it is computed here."""
    images = digest if digest is not None else images_digest(ds, image_column)
    payload = json.dumps({"version": CACHE_VERSION, "spec": spec.__dict__, "pillow": PIL.__version__,
                          "images": images, "count": len(ds)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _encode_batch(batch: Dict[str, List[Any]], indices: List[int], *, image_column: str, spec: CacheSpec,
                  processor: Any) -> Dict[str, Any]:
    """Each image as its stored square, and the size in the image's pixels of the region that
    square shows (what the random crops are drawn for)."""
    from facemask.pipeline.processor import input_region

    pixels, widths, heights = [], [], []
    for item, index in zip(batch[image_column], indices):
        try:
            # Draft-decode JPEGs at no less than twice the stored side: the resize that follows
            # then still antialiases from a larger image.
            image = load_image(item, 2 * spec.side)
        except Exception as err:
            where = (item.get("path") if isinstance(item, dict) else None) or f"image #{index}"
            raise ValueError(f"cannot decode {where}: {err} (run `python -m facemask audit` to list bad "
                             "images; data.on_bad_image=skip leaves them out)") from err
        region = input_region(processor, image.width, image.height)
        width, height = region_pixels(region)
        widths.append(width)
        heights.append(height)
        if spec.mode == "eval":
            chw = processor([image], do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"][0]
            hwc = np.ascontiguousarray(chw.transpose(1, 2, 0), dtype=np.uint8)
        else:
            # The region, squashed to the square (the whole image for processors that squash).
            hwc = np.asarray(image.resize((spec.side, spec.side), spec.resample, box=region), dtype=np.uint8)
        if hwc.shape != (spec.side, spec.side, 3):
            raise ValueError(f"the image processor made a {hwc.shape} image, expected {spec.side}x{spec.side}x3")
        pixels.append(hwc.tobytes())
    return {"pixels": pixels, "width": widths, "height": heights}


class CachedImages(torch.utils.data.Dataset):
    """A cached split as a map-style dataset whose batches are gathered straight from the
    memory-mapped Arrow files: {"pixels": uint8 (B, S, S, 3), "labels", "index", "width", "height"},
    width and height being the size in source pixels of the region the square shows.

    Labels come from the split, not the cache, which is keyed by images alone: relabelling a
    dataset must not need a rebuild, nor be hidden by one.
    """

    def __init__(self, table: datasets.Dataset, spec: CacheSpec, labels: np.ndarray, path: Path) -> None:
        self.spec, self.path, self._table = spec, path, table
        arrow = table.data.table
        self.labels = np.asarray(labels, dtype=np.int64)
        self.width, self.height = (arrow.column(name).to_numpy().astype(np.int64) for name in ("width", "height"))
        self._views()

    def __getstate__(self) -> Dict[str, Any]:
        # DataLoader workers started by spawn get the memory-mapped files by name, not their pixels.
        return {k: v for k, v in self.__dict__.items() if k != "_chunks"}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views()

    def _views(self) -> None:
        spec, path = self.spec, self.path
        # Each image is one fixed-size binary value; a chunk's values sit back to back in one
        # buffer, read here as an array without a copy.
        item = spec.side * spec.side * 3
        self._chunks: List[np.ndarray] = []
        for chunk in self._table.data.table.column("pixels").chunks:
            offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
            if len(chunk) and not np.all(np.diff(offsets) == item):
                raise RuntimeError(f"{path}: cached images are not {spec.side}x{spec.side}x3; delete the folder")
            buffer = chunk.buffers()[2]
            values = np.frombuffer(buffer, dtype=np.uint8, count=len(chunk) * item, offset=int(offsets[0])) \
                if len(chunk) else np.empty(0, np.uint8)
            self._chunks.append(values.reshape(len(chunk), spec.side, spec.side, 3))
        self._starts = np.cumsum([0] + [len(c) for c in self._chunks])
        if self._starts[-1] != len(self.labels):
            raise RuntimeError(f"{path}: the cache holds {self._starts[-1]} images for {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> Dict[str, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self._starts, idx, side="right") - 1
        pixels = np.empty((len(idx), self.spec.side, self.spec.side, 3), dtype=np.uint8)
        for row, (chunk, i) in enumerate(zip(which, idx)):
            pixels[row] = self._chunks[chunk][i - self._starts[chunk]]
        return {"pixels": torch.from_numpy(pixels), "labels": torch.from_numpy(self.labels[idx]),
                "index": torch.from_numpy(idx), "width": torch.from_numpy(self.width[idx]),
                "height": torch.from_numpy(self.height[idx])}

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def collate_cached(batch: Any) -> Dict[str, torch.Tensor]:
    """The DataLoader collate for CachedImages: `__getitems__` already returns a whole batch."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.stack([item[k] for item in batch]) for k in batch[0]}


@dataclass
class CacheReport:
    split: str
    path: str
    images: int
    reused: bool
    seconds: float
    processes: int

    def describe(self) -> str:
        if self.reused:
            return f"{self.split}: reused the preprocessing cache {self.path} ({self.images} images, no decoding)"
        rate = self.images / self.seconds if self.seconds > 0 else float("inf")
        return (f"{self.split}: built the preprocessing cache {self.path}: {self.images} images decoded in "
                f"{self.seconds:.1f} s ({rate:.0f} images/s, {self.processes} process(es))")


def default_num_proc(num_images: int) -> int:
    """All cores, but no more processes than batches of a few hundred images (forking costs ~1 s)."""
    return max(1, min(os.cpu_count() or 1, math.ceil(num_images / _MIN_IMAGES_PER_PROCESS)))


def _load(folder: Path, spec: CacheSpec, labels: np.ndarray, verify: bool = True) -> CachedImages:
    """The cache as its record (cache.json) describes it; Damaged when a file's size, rows or
    checksum differ from the record (a copy cut short, a full disk, blocks zeroed by a crash, flipped
    bits) or a file cannot be read at all. The checksum reads every byte once per open (~0.2 s a
    GB where the file is in memory, as it then is for the first epoch; bench/cache_check.py)."""
    try:
        record = json.loads((folder / "cache.json").read_text(encoding="utf-8"))
        parts = []
        for name, expected in record["files"].items():
            size = (folder / name).stat().st_size
            if size != expected["bytes"]:
                raise Damaged(f"{name} holds {size} bytes, its record says {expected['bytes']}")
            if verify:
                check_checksums(folder, {name: expected["xxh3_64"]})
            part = datasets.Dataset.from_file(str(folder / name))
            if len(part) != expected["rows"]:
                raise Damaged(f"{name} holds {len(part)} images, its record says {expected['rows']}")
            parts.append(part)
        table = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        return CachedImages(table, spec, labels, folder)
    except Damaged:
        raise
    except OSError as err:
        if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            raise  # the machine's limits, not the cache: it stays
        raise Damaged(first_line(err)) from None  # a truncated record batch
    except (ValueError, KeyError, RuntimeError) as err:
        # pyarrow's ArrowInvalid is a ValueError; a record without a file's entry a KeyError;
        # CachedImages' shape and count checks RuntimeErrors.
        raise Damaged(first_line(err)) from None


def build_or_load(ds: datasets.Dataset, split: str, image_column: str, label_column: str, spec: CacheSpec,
                  processor: Any, root: Path, num_proc: Optional[int] = None,
                  digest: Optional[str] = None) -> tuple[CachedImages, CacheReport]:
    """The split's cache, built on first use (in `num_proc` processes) and reused after that;
    `digest`: the split's images digest, where the caller has it (see `cache_key`)."""
    start = time.perf_counter()
    key = cache_key(ds, image_column, spec, digest)
    folder = root / f"{spec.mode}-{spec.side}px-{key}"
    labels = ds.select_columns([label_column]).with_format("numpy")[label_column]
    if folder.exists() and not (folder / "cache.json").is_file():
        discard(folder, "it has no cache.json, the record written last")  # a copy cut short
    if (folder / "cache.json").is_file():
        try:
            cached = _load(folder, spec, labels)
            mark_used(folder / "cache.json")
            return cached, CacheReport(split, str(folder), len(cached), True, time.perf_counter() - start, 0)
        except Damaged as err:
            discard(folder, str(err))

    num_proc = num_proc or default_num_proc(len(ds))
    # uint8 pixels, plus Arrow's offsets and the width and height columns.
    require_space(root, int(len(ds) * (spec.side * spec.side * 3 + 16) * 1.02) + 1_000_000,
                  f"the preprocessing cache of the {split} split ({len(ds)} images at {spec.side} px)",
                  "set data.preprocess_dir to a folder on a larger disk (or data.preprocess=per_image, which keeps "
                  "no cache)")
    root.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({
        "pixels": datasets.Value("binary"), "width": datasets.Value("int32"),
        "height": datasets.Value("int32")})
    with staged(folder, folder=True) as staging, forks_die_with_this_process(), datasets_lines():
        built = ds.select_columns([image_column]).map(
            functools.partial(_encode_batch, image_column=image_column, spec=spec, processor=processor),
            batched=True, batch_size=64, with_indices=True, remove_columns=[image_column], features=features,
            num_proc=num_proc if num_proc > 1 else None, cache_file_name=str(staging / "pixels.arrow"),
            writer_batch_size=256, desc=f"caching {split} images", load_from_cache_file=False,
            new_fingerprint=key)
        files = {}
        for name in sorted(Path(f["filename"]).name for f in built.cache_files):
            rows = len(datasets.Dataset.from_file(str(staging / name)))
            files[name] = {"bytes": (staging / name).stat().st_size, "rows": rows,
                           "xxh3_64": checksum(staging / name)}
        del built
        record = {"version": CACHE_VERSION, "spec": spec.__dict__, "images": len(ds), "files": files,
                  "seconds": round(time.perf_counter() - start, 2), "processes": num_proc}
        (staging / "cache.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    # Checked like any open: where another process's copy won the rename, this one is read (~1% of a build).
    cached = _load(folder, spec, labels)
    return cached, CacheReport(split, str(folder), len(cached), False, time.perf_counter() - start, num_proc)
