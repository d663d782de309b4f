"""Exponential moving average of the weights, kept on the model's device.

After every `every` optimizer steps: ema = d x ema + (1 - d) x weights, where d is the decay, or
with warmup min(decay, (1 + n) / (10 + n)) after n updates (timm's ModelEmaV3), so the average is
not dominated by the random-init head early on. Checkpoints hold it (ema.safetensors, beside the
live weights that training resumes from); evaluation, the choice of the best checkpoint and the
saved model use it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch

FILE = "ema.safetensors"


class WeightAverage:
    """The average of `model`'s trained parameters. The per-step update is one fused lerp over
    lists built at set-up, not a walk over the model every step. The lists hold the Parameter
    objects themselves, which a move to another device or dtype keeps (it swaps their storage);
    `attach` looks them up again for a model whose parameters were replaced (the Trainer calls it
    when training begins)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True, every: int = 1) -> None:
        self.decay, self.warmup, self.every = decay, warmup, every
        self.updates = 0
        self.shadow: Dict[str, torch.Tensor] = {name: p.detach().clone() for name, p in self._tracked(model)}
        self.attach(model)

    def attach(self, model: torch.nn.Module) -> None:
        """Average `model`'s parameters from here on (the same names), the average kept on their device."""
        tracked = list(self._tracked(model))
        if sorted(name for name, _ in tracked) != sorted(self.shadow):
            raise RuntimeError("the weight average was built for another model: its trained parameters differ")
        for name, param in tracked:
            if self.shadow[name].device != param.device or self.shadow[name].dtype != param.dtype:
                self.shadow[name] = self.shadow[name].to(param.device, param.dtype)
        self._weights: List[torch.Tensor] = [param for _, param in tracked]
        self._averages: List[torch.Tensor] = [self.shadow[name] for name, _ in tracked]

    @staticmethod
    def _tracked(model: torch.nn.Module) -> Iterator[tuple]:
        for name, param in model.named_parameters():
            # What is trained: frozen weights never move, so are not averaged.
            if param.dtype.is_floating_point and param.requires_grad:
                # torch.compile's wrapper prefixes every name; the average is kept under the plain ones.
                yield name.replace("_orig_mod.", ""), param

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def step(self, global_step: int) -> None:
        """Called after each optimizer step; updates on every `every`-th."""
        if global_step % self.every:
            return
        torch._foreach_lerp_(self._averages, self._weights, 1.0 - self.current_decay())
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, param in self._tracked(model):
            param.copy_(self.shadow[name])

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own after."""
        saved = {name: p.detach().clone() for name, p in self._tracked(model)}
        self.copy_to(model)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self._tracked(model):
                    param.copy_(saved[name])

    def save(self, folder: str) -> None:
        from safetensors.torch import save_file

        tensors = {name: t.detach().contiguous().cpu() for name, t in self.shadow.items()}
        save_file(tensors, os.path.join(folder, FILE), metadata={"updates": str(self.updates),
                                                                  "decay": str(self.decay)})

    def load(self, folder: str) -> None:
        from safetensors import safe_open

        path = os.path.join(folder, FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: this checkpoint was written without recipe.ema_decay, "
                                    "so it cannot be resumed with it (resume without EMA, or start over)")
        with safe_open(path, framework="pt") as f:
            self.updates = int(f.metadata()["updates"])
            for name in self.shadow:
                self.shadow[name].copy_(f.get_tensor(name))
