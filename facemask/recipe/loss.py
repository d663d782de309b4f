"""The training loss: cross-entropy on soft targets, with label smoothing, class weights and
mixed (mixup/CutMix) targets in one function.

    targets t (B, C): (1 - eps) x one-hot + eps / C, then mixed: lam x t_a + (1 - lam) x t_b
    loss = sum_i sum_c w_c t_ic (-log p_ic) / sum_i sum_c w_c t_ic

Without class weights (w = 1) the denominator is the batch size: the usual mean. With hard
targets it equals torch's weighted `cross_entropy` (mean over the weights of the true classes).
Evaluation reports plain cross-entropy (no smoothing, no weights), comparable across recipes.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
import torch.nn.functional as F

from facemask.config.schema import ConfigError, nearest


def smoothed_targets(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Integer labels (B,) -> soft targets (B, C)."""
    targets = F.one_hot(labels.long(), num_classes).float()
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / num_classes
    return targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                       class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    log_probs = F.log_softmax(logits.float(), dim=-1)
    if class_weights is None:
        return -(targets * log_probs).sum(dim=-1).mean()
    weighted = targets * class_weights.to(targets.device)
    return -(weighted * log_probs).sum() / weighted.sum()


def class_weights(setting: Union[str, Dict[str, float], None], labels: List[str],
                  counts: Dict[str, int]) -> Optional[torch.Tensor]:
    """`recipe.class_weights` as a tensor in label order: 'balanced' is n / (C x n_c) from the
    training split's counts (scikit-learn's definition), a mapping gives each class's weight
    (classes left out weigh 1)."""
    if setting is None:
        return None
    if setting == "balanced":
        missing = [name for name in labels if not counts.get(name)]
        if missing:
            raise ConfigError(f"'recipe.class_weights: balanced': the training split has no images of {missing}")
        total = sum(counts[name] for name in labels)
        return torch.tensor([total / (len(labels) * counts[name]) for name in labels], dtype=torch.float32)
    for name in setting:
        if name not in labels:
            raise ConfigError(f"'recipe.class_weights.{name}': no such class (classes: {', '.join(labels)}); "
                              f"{nearest(name, labels)}")
    return torch.tensor([float(setting.get(name, 1.0)) for name in labels], dtype=torch.float32)
