"""Mixup and CutMix on the device batch, with soft targets.

Each batch draws from a generator keyed by (seed, process, optimizer step, micro-batch), never
from the global random state, so a resumed run mixes exactly as an uninterrupted one. As in timm,
a batch is mixed with itself reversed (no permutation to draw or transfer), and CutMix's lambda is
corrected to the area of the box after clipping to the image.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch


class Mixer:
    def __init__(self, mixup_alpha: float, cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5,
                 seed: int = 0, process: int = 0) -> None:
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.seed, self.process = seed, process

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def draw(self, step: int, micro: int, height: int, width: int) -> Tuple[str, float, Optional[tuple]]:
        """('none' | 'mixup' | 'cutmix', lambda, box (top, bottom, left, right) for cutmix)."""
        rng = np.random.default_rng([self.seed, self.process, step, micro])
        if not self.active or rng.random() >= self.prob:
            return "none", 1.0, None
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if not use_cutmix:
            return "mixup", lam, None
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
        return "cutmix", lam, (top, bottom, left, right)

    def __call__(self, pixels: torch.Tensor, targets: torch.Tensor, step: int,
                 micro: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        kind, lam, box = self.draw(step, micro, pixels.shape[-2], pixels.shape[-1])
        if kind == "none":
            return pixels, targets
        if kind == "mixup":
            pixels = pixels * lam + pixels.flip(0) * (1.0 - lam)
        else:
            top, bottom, left, right = box
            pixels = pixels.clone()
            pixels[..., top:bottom, left:right] = pixels.flip(0)[..., top:bottom, left:right]
        return pixels, targets * lam + targets.flip(0) * (1.0 - lam)
