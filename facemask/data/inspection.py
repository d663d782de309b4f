"""One inspection per stored image: readable or why not, format, mode, size, EXIF rotation, content
hash, perceptual hash and sharpness at the model's input size.

Every image is inspected as stored (bytes or path, undecoded by datasets), with the same opener
training uses, so what the audit passes, training can read. Inspections are kept on disk under a
fingerprint of the images and of what the inspection depends on: unchanged data is not decoded
again by a later run.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import warnings
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from facemask.data.storage import (Damaged, cache_root, discard, first_line, images_digest, mark_used, read_checked,
                                   staged, write_checked)
from facemask.processes import die_with_parent

HASH_SIZE = 16  # 256-bit perceptual hash: 64 bits confuse simple, similar images
INSPECTION_VERSION = 3  # 3: the kept file starts with its checksum (storage.write_checked)


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
    # Variance of the Laplacian of the grey image resized to the model's side: low for images that
    # were upsampled from small ones, whatever size their files have.
    sharpness: Optional[float] = None


def read_bytes(item: Dict[str, Any]) -> bytes:
    """A stored image's bytes: held in the dataset, or read from its file."""
    if item.get("bytes") is not None:
        return item["bytes"]
    return Path(item["path"]).read_bytes()


def sharpness(image: Image.Image, side: int) -> float:
    """Variance of the 4-neighbour Laplacian at side x side (bilinear, as the processors resize)."""
    grey = np.asarray(image.convert("L").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)
    lap = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return round(float(lap.var()), 3)


def inspect_image(item: Dict[str, Any], min_side: int, image_side: int = 224) -> Inspection:
    """Check one stored image without trusting its extension, decoding it fully once."""
    import imagehash

    data = read_bytes(item)
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
                # As the preprocessing cache decodes it: sharpness is measured on what the model sees.
                side = max(4 * HASH_SIZE, 2 * image_side)
                image.draft("RGB", (side, side))
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
    from facemask.data.images import to_rgb

    rgb = to_rgb(image)
    result.phash = imagehash.phash(rgb, hash_size=HASH_SIZE).hash.flatten()
    result.sharpness = sharpness(rgb, image_side)
    return result


def split_digest(inspections: Optional[Sequence[Inspection]], label_ids: Sequence[int],
                 labels: Sequence[str]) -> Optional[str]:
    """A split's identity: each image's content hash (from its inspection: no byte is read again) and
    class name, in row order. It survives moving or copying the data, and any other seed, fold or
    data override that carves other images changes it. None without inspections (data.audit=false)."""
    if inspections is None:
        return None
    digest = hashlib.sha256()
    for found, label in zip(inspections, label_ids, strict=True):
        digest.update(f"{found.sha256 or ''}\0{labels[int(label)]}\n".encode())
    return digest.hexdigest()


def _inspect_chunk(items: List[Dict[str, Any]], min_side: int, image_side: int) -> List[Inspection]:
    return [inspect_image(item, min_side, image_side) for item in items]


def _inspect_splits(todo: Dict[str, datasets.Dataset], image_column: str, min_side: int, image_side: int,
                    chunk: int = 256) -> Dict[str, List[Inspection]]:
    """One inspection per stored image, chunk by chunk (bytes are not all held at once), on every core."""
    workers = min(os.cpu_count() or 1, 8)
    found: Dict[str, List[Inspection]] = {split: [] for split in todo}
    pending: deque = deque()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        for split, ds in todo.items():
            for start in range(0, len(ds), chunk):
                items = ds[start:start + chunk][image_column]
                pending.append((split, pool.submit(_inspect_chunk, items, min_side, image_side)))
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


def saved_inspections_path(ds: datasets.Dataset, image_column: str, min_side: int, image_side: int,
                           preprocess_dir: Optional[str], digest: Optional[str] = None) -> Path:
    """Where a split's inspections are kept: named by its images (`digest`, the split's images
    digest where the caller has it) and what the inspection depends on."""
    import imagehash
    import PIL

    images = digest if digest is not None else images_digest(ds, image_column)
    payload = json.dumps({"images": images, "min_side": min_side, "image_side": image_side,
                          "hash_size": HASH_SIZE, "pillow": PIL.__version__, "imagehash": imagehash.__version__,
                          "max_pixels": Image.MAX_IMAGE_PIXELS, "version": INSPECTION_VERSION}, sort_keys=True)
    return cache_root(preprocess_dir) / f"audit-{hashlib.sha256(payload.encode()).hexdigest()[:24]}.json"


def _read_saved(path: Path, images: int) -> List[Inspection]:
    """Kept inspections, checked: unchanged since written, one per image of the split, each readable."""
    try:
        found = [_from_json(r) for r in json.loads(read_checked(path))]
    except (OSError, ValueError, KeyError, TypeError) as err:  # a file cut short is not valid JSON
        raise Damaged(first_line(err)) from None
    if len(found) != images:
        raise Damaged(f"it holds {len(found)} inspections for {images} images")
    return found


def inspect_splits(splits: Dict[str, datasets.Dataset], image_column: str, min_side: int, image_side: int,
                   preprocess_dir: Optional[str] = None,
                   digests: Optional[Dict[str, str]] = None) -> Dict[str, List[Inspection]]:
    """Each split's inspections, in row order: read back where kept, else computed and kept.
    `digests`: each split's images digest, where the caller has them."""
    splits = {name: ds.cast_column(image_column, datasets.Image(decode=False)) for name, ds in splits.items()}
    saved = {name: saved_inspections_path(ds, image_column, min_side, image_side, preprocess_dir,
                                          (digests or {}).get(name))
             for name, ds in splits.items()}
    inspections = {}
    for name, path in saved.items():
        if path.is_file():
            try:
                inspections[name] = _read_saved(path, len(splits[name]))
                mark_used(path)
            except Damaged as err:
                discard(path, str(err))
    todo = {name: ds for name, ds in splits.items() if name not in inspections}
    if todo:
        for name, found in _inspect_splits(todo, image_column, min_side, image_side).items():
            inspections[name] = found
            try:
                saved[name].parent.mkdir(parents=True, exist_ok=True)
                with staged(saved[name]) as partial:
                    write_checked(partial, json.dumps([_to_json(f) for f in found]).encode("utf-8"))
            except OSError:
                pass  # a read-only cache folder costs the next run a re-inspection, nothing else
    return inspections
