"""Augmentation and normalisation of batches of cached uint8 images, on their device.

Crop boxes and flips are drawn per sample with the per-image path's own sampler
(`data.crop_and_flip`) and the same (seed, epoch, index) key, in the original image's
coordinates: a sample gets the same crop in either path, so the two agree in distribution and, up
to resampling, image by image. On CPU, crops are cut from the uint8 batch as views and resized as
uint8 (torch's vectorised, antialiased resize); on a GPU (and for small images) one grid_sample
resamples the whole batch. Then the batch is converted and normalised at once.
Evaluation batches only get the processor's rescale and normalise, computed in the same order
and precision as the processor does, so they equal its output.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from facemask.config.schema import DataConfig
from facemask.pipeline.geometry import AugmentationClock, crop_and_flip


def per_channel(value: Any, default: float) -> List[float]:
    if value is None:
        value = default
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3


def _edges(low: float, high: float, side: int) -> tuple[int, int]:
    """A crop's [low, high) fractions as whole pixels of a `side`-pixel image, at least one wide."""
    start = min(int(round(low * side)), side - 1)
    return start, max(start + 1, min(side, int(round(high * side))))


class BatchTransform:
    """{"pixels": uint8 (B, S, S, 3), "labels", "index", "width", "height"} -> {"pixel_values", "labels"}."""

    resize_uint8: Optional[bool] = None  # per-sample uint8 resizes; None: on CPU from 64 px up
    # Write each batch's values into the previous batch's float tensor: a fresh 77 MB tensor per
    # 224 px batch of 128 costs more in page faults on CPU than normalising it. Only for owners
    # that drop a batch's inputs once its step is done (FaceMaskTrainer decides).
    reuse_output: bool = False

    def __init__(self, processor: Any, cfg: DataConfig, output_side: int,
                 clock: Optional[AugmentationClock] = None) -> None:
        self.cfg, self.side, self.clock = cfg, output_side, clock
        self.do_rescale = bool(getattr(processor, "do_rescale", True))
        self.rescale_factor = float(getattr(processor, "rescale_factor", 1 / 255))
        self.do_normalize = bool(getattr(processor, "do_normalize", True))
        self.mean = torch.tensor(per_channel(getattr(processor, "image_mean", None), 0.5)).view(1, 3, 1, 1)
        self.std = torch.tensor(per_channel(getattr(processor, "image_std", None), 0.5)).view(1, 3, 1, 1)
        self._divisor = self._exact_divisor() if self.do_rescale else None
        # Training crops: a multiply and an add per value, equal to the exact path within rounding.
        self._scale = torch.full_like(self.mean, self.rescale_factor if self.do_rescale else 1.0)
        self._shift = torch.zeros_like(self.mean)
        if self.do_normalize:
            self._scale, self._shift = self._scale / self.std, -self.mean / self.std
        self._outputs: Dict[bool, torch.Tensor] = {}
        self._constants: Dict[torch.device, tuple] = {}

    def constants(self, device: torch.device) -> tuple:
        """(mean, std, scale, shift) on `device`, moved there once rather than every batch."""
        found = self._constants.get(device)
        if found is None:
            found = self._constants[device] = tuple(t.to(device) for t in (self.mean, self.std, self._scale,
                                                                            self._shift))
        return found

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
            (left, top, right, bottom), flip = crop_and_flip(width, height, self.cfg, gen)
            rows.append((left / width, top / height, right / width, bottom / height, float(flip)))
        return torch.tensor(rows, dtype=torch.float32)

    def crop_and_flip(self, pixels: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> each sample's crop resized to the model's side, mirrored where drawn."""
        boxes = self.boxes(batch)
        per_sample = self.resize_uint8
        if per_sample is None:
            # Measured on CPU: per-sample uint8 resizes (torch's vectorised kernel) are 3x faster
            # than one float grid_sample over the batch from 64 px up, slower below (call overhead).
            per_sample = pixels.device.type == "cpu" and self.side >= 64
        if per_sample:
            return self._resize_each(pixels, boxes.tolist())
        return self._resample_batch(pixels, boxes.to(pixels.device))

    def _resize_each(self, pixels: torch.Tensor, boxes: List[List[float]]) -> torch.Tensor:
        side = pixels.shape[-1]
        crops = []
        for image, (left, top, right, bottom, flip) in zip(pixels, boxes):
            x0, x1 = _edges(left, right, side)
            y0, y1 = _edges(top, bottom, side)
            crop = F.interpolate(image[None, :, y0:y1, x0:x1], size=(self.side, self.side), mode="bilinear",
                                 antialias=True, align_corners=False)
            crops.append(crop.flip(-1) if flip else crop)
        return torch.cat(crops)

    def _resample_batch(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        left, top, right, bottom, flip = boxes.unbind(1)
        # grid_sample's sampling grid in [-1, 1] over the cached image: crops are axis-aligned, so
        # x depends on the column only and y on the row only (affine_grid would cost a batched
        # matrix product per pixel). A negative x scale mirrors.
        steps = (torch.arange(self.side, device=pixels.device, dtype=torch.float32) * 2 + 1) / self.side - 1
        xs = ((right - left) * (1 - 2 * flip))[:, None] * steps + (left + right - 1)[:, None]
        ys = (bottom - top)[:, None] * steps + (top + bottom - 1)[:, None]
        n = len(xs)
        grid = torch.stack((xs[:, None, :].expand(n, self.side, self.side),
                            ys[:, :, None].expand(n, self.side, self.side)), dim=-1)
        return F.grid_sample(pixels.contiguous().float(), grid, mode="bilinear", padding_mode="border",
                             align_corners=False)

    def _exact_divisor(self) -> Optional[float]:
        """A float32 divisor that reproduces the processor's rescale bit for bit, if there is one.

        The processor rescales in float64 and rounds to float32 (numpy's `astype`); multiplying in
        float32 instead differs in the last bit for half of the 256 values, while a correctly
        rounded float32 division by 255 matches all of them (checked here, for this factor).
        """
        values = torch.arange(256, dtype=torch.float64)
        reference = (values * self.rescale_factor).float()
        divisor = float(torch.tensor(1.0 / self.rescale_factor, dtype=torch.float32))
        return divisor if torch.equal(values.float().div_(divisor), reference) else None

    def _as_float(self, values: torch.Tensor, exact: bool) -> torch.Tensor:
        """`values` converted to a contiguous float32 tensor (the reused one, if allowed)."""
        if not self.reuse_output:
            return values.contiguous().float()
        out = self._outputs.get(exact)
        if out is None or out.shape != values.shape or out.device != values.device:
            out = self._outputs[exact] = torch.empty(values.shape, dtype=torch.float32, device=values.device)
        return out.copy_(values)

    def normalize(self, values: torch.Tensor, exact: bool) -> torch.Tensor:
        if exact:
            if self.do_rescale and self._divisor is None:
                values = (values.double() * self.rescale_factor).float()
            values = self._as_float(values, exact)
            if self.do_rescale and self._divisor is not None:
                values = values.div_(self._divisor)
            if self.do_normalize:
                mean, std, _, _ = self.constants(values.device)
                values = values.sub_(mean).div_(std)
            return values
        _, _, scale, shift = self.constants(values.device)
        return self._as_float(values, exact).mul_(scale).add_(shift)
