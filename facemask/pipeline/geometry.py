"""One training sample's crop box and flip, drawn the same way by both input paths, and the clock
that keys them by (seed, epoch, sample index).
"""

from __future__ import annotations

import math
import random
from typing import List, Optional

import torch

from facemask.config.schema import DataConfig


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


def region_pixels(region: tuple[float, float, float, float]) -> tuple[int, int]:
    """A region's width and height in whole pixels: the size its random crops are drawn for (the
    cache stores it as the image's width and height)."""
    left, top, right, bottom = region
    return max(1, int(round(right - left))), max(1, int(round(bottom - top)))


def crop_and_flip_in(region: tuple[float, float, float, float], cfg: DataConfig,
                     rng: Optional[random.Random] = None) -> tuple[tuple[int, int, int, int], bool]:
    """`crop_and_flip` drawn within a region of the image (pipeline.processor.input_region), the box
    in the image's whole pixels. The cache draws for the region's `region_pixels` directly, on its
    stored square of the region: the same key gives the same fractions of the region in both."""
    left, top, right, bottom = region
    width, height = region_pixels(region)
    (x0, y0, x1, y1), flip = crop_and_flip(width, height, cfg, rng)
    sx, sy = (right - left) / width, (bottom - top) / height
    return (int(round(left + x0 * sx)), int(round(top + y0 * sy)),
            int(round(left + x1 * sx)), int(round(top + y1 * sy))), flip


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
        # A new one per sample costs the same as reseeding one (measured, #33): it is kept.
        return random.Random(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % 2**63)
