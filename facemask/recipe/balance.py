"""Class imbalance: a sampler that draws each class equally often (the alternative to class
weights in the loss, facemask/recipe/loss.py)."""

from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np
import torch


class BalancedSampler(torch.utils.data.Sampler):
    """Draws len(labels) indices per epoch with replacement, each sample with probability
    proportional to 1 / (its class's count). The draw is keyed by (seed, epoch): every process of
    a distributed run draws the same order (accelerate then shards it), and a resumed run the same
    as an uninterrupted one. The Trainer calls `set_epoch` before each epoch."""

    def __init__(self, labels: Sequence[int], seed: int) -> None:
        self.labels = np.asarray(labels)
        counts = np.bincount(self.labels)
        weights = 1.0 / counts[self.labels]
        self.probabilities = weights / weights.sum()
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self) -> List[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.choice(len(self.labels), size=len(self.labels), replace=True, p=self.probabilities).tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())
