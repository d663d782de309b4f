"""Photometric augmentation of the device batch with kornia: colour jitter, RandAugment, camera
corruptions and random erasing (timm's --color-jitter, --aa rand-m9-n2, --reprob), after the crop
and flip.

The batch arrives normalised; it is taken back to [0, 1] with the processor's mean and std,
augmented, and normalised again. kornia draws its parameters from torch's global generator, so
each batch runs inside `torch.random.fork_rng` seeded by (seed, process, optimizer step,
micro-batch): the draws do not disturb the global state and a resumed run repeats them.
"""

from __future__ import annotations

import hashlib
from typing import Any, List, Optional

import torch

from facemask.pipeline.augment import per_channel


class PhotometricAugment:
    def __init__(self, color_jitter: float, rand_augment_n: int, rand_augment_m: int, random_erasing: float,
                 processor: Any, seed: int = 0, process: int = 0, corruption_augment: float = 0.0) -> None:
        import kornia.augmentation as K
        from kornia.augmentation.auto import RandAugment

        # On [0, 1] images, before normalising again.
        photometric: List[Any] = []
        if color_jitter > 0:
            photometric.append(K.ColorJitter(color_jitter, color_jitter, color_jitter, 0.0, p=1.0))
        if rand_augment_n > 0:
            photometric.append(RandAugment(n=rand_augment_n, m=rand_augment_m))
        if corruption_augment > 0:
            # What a poor camera does (evaluation/corruptions.py's suite, at its milder severities),
            # each alone at a fifth of the rate: an image meets about `corruption_augment` of them.
            p = corruption_augment / 5
            photometric += [K.RandomGaussianBlur((5, 5), (0.1, 1.5), p=p), K.RandomMotionBlur(5, 45.0, 0.0, p=p),
                            K.RandomGaussianNoise(std=0.08, p=p), K.RandomJPEG(jpeg_quality=(15.0, 75.0), p=p),
                            K.RandomGamma(gamma=(1.0, 2.5), p=p)]
        self.photometric = photometric
        # On the normalised batch: erased boxes get the mean colour (0), as timm's 'const' mode.
        self.erasing = K.RandomErasing(p=random_erasing, value=0.0) if random_erasing > 0 else None
        self.steps = photometric + ([self.erasing] if self.erasing is not None else [])
        self.mean = torch.tensor(per_channel(getattr(processor, "image_mean", None), 0.5)).view(1, 3, 1, 1)
        self.std = torch.tensor(per_channel(getattr(processor, "image_std", None), 0.5)).view(1, 3, 1, 1)
        self.seed, self.process = seed, process
        self._constants: dict = {}

    def key(self, step: int, micro: int) -> int:
        text = f"{self.seed}/{self.process}/{step}/{micro}".encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") % 2**63

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor, step: int, micro: int = 0) -> torch.Tensor:
        if not self.steps:
            return pixel_values
        device = pixel_values.device
        if device not in self._constants:
            self._constants[device] = (self.mean.to(device), self.std.to(device))
        mean, std = self._constants[device]
        devices = [pixel_values.device] if pixel_values.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.key(step, micro))
            images = pixel_values.float()
            if self.photometric:
                images = (images * std + mean).clamp_(0.0, 1.0)
                for augment in self.photometric:
                    images = augment(images)
                images = (images.clamp_(0.0, 1.0) - mean) / std  # noise and gamma can leave [0, 1]
            if self.erasing is not None:
                images = self.erasing(images)
        return images.to(pixel_values.dtype)


def describe(augment: Optional[PhotometricAugment]) -> Optional[str]:
    if augment is None or not augment.steps:
        return None
    return ", ".join(type(step).__name__ for step in augment.steps)
