"""Augmentation and normalisation on whole batches of cached uint8 images, on their device.

Crop boxes and flips are drawn per sample with the per-image path's own sampler
(`data.random_resized_crop_box`) and the same (seed, epoch, index) key, in the original image's
coordinates: a sample gets the same crop in either path, so the two agree in distribution and, up
to resampling, image by image. The crops are then cut and resized for the whole batch at once by
one `grid_sample`. Evaluation batches only get the processor's rescale and normalise, computed in
the same order and precision as the processor does, so they equal its output.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from .config import DataConfig
from .data import AugmentationClock, random_resized_crop_box


def _per_channel(value: Any, default: float) -> List[float]:
    if value is None:
        value = default
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3


class BatchTransform:
    """{"pixels": uint8 (B, S, S, 3), "labels", "index", "width", "height"} -> {"pixel_values", "labels"}."""

    def __init__(self, processor: Any, cfg: DataConfig, output_side: int,
                 clock: Optional[AugmentationClock] = None) -> None:
        self.cfg, self.side, self.clock = cfg, output_side, clock
        self.do_rescale = bool(getattr(processor, "do_rescale", True))
        self.rescale_factor = float(getattr(processor, "rescale_factor", 1 / 255))
        self.do_normalize = bool(getattr(processor, "do_normalize", True))
        self.mean = torch.tensor(_per_channel(getattr(processor, "image_mean", None), 0.5)).view(1, 3, 1, 1)
        self.std = torch.tensor(_per_channel(getattr(processor, "image_std", None), 0.5)).view(1, 3, 1, 1)

    def __call__(self, batch: Dict[str, torch.Tensor], train: bool) -> Dict[str, torch.Tensor]:
        pixels = batch["pixels"].permute(0, 3, 1, 2)
        if train and self.cfg.augment:
            return {"pixel_values": self.normalize(self.crop_and_flip(pixels, batch), exact=False),
                    "labels": batch["labels"]}
        return {"pixel_values": self.normalize(pixels, exact=True), "labels": batch["labels"]}

    def boxes(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per sample (left, top, right, bottom) as fractions of the image, and a flip flag."""
        rows = []
        widths, heights = batch["width"].tolist(), batch["height"].tolist()
        for width, height, index in zip(widths, heights, batch["index"].tolist()):
            gen = self.clock.generator(index) if self.clock is not None else None
            left, top, right, bottom = random_resized_crop_box(width, height, self.cfg.crop_scale,
                                                               self.cfg.crop_ratio, gen)
            flip = torch.rand(1, generator=gen).item() < self.cfg.hflip_prob
            rows.append((left / width, top / height, right / width, bottom / height, float(flip)))
        return torch.tensor(rows, dtype=torch.float32)

    def crop_and_flip(self, pixels: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        boxes = self.boxes(batch)
        left, top, right, bottom, flip = boxes.unbind(1)
        # affine_grid maps output coordinates in [-1, 1] to input ones; a negative x scale mirrors.
        theta = torch.zeros(len(boxes), 2, 3)
        theta[:, 0, 0] = (right - left) * (1 - 2 * flip)
        theta[:, 0, 2] = left + right - 1
        theta[:, 1, 1] = bottom - top
        theta[:, 1, 2] = top + bottom - 1
        size = (len(boxes), pixels.shape[1], self.side, self.side)
        grid = F.affine_grid(theta.to(pixels.device), size, align_corners=False)
        return F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)

    def normalize(self, values: torch.Tensor, exact: bool) -> torch.Tensor:
        if self.do_rescale and exact:
            # The processor rescales in float64 and rounds to float32 (numpy's `astype`), then
            # normalises in float32: the same steps give the same numbers.
            values = values.double() * self.rescale_factor
        elif self.do_rescale:
            values = values.float() * self.rescale_factor
        values = values.float()
        if self.do_normalize:
            values = (values - self.mean.to(values.device)) / self.std.to(values.device)
        return values.contiguous()
