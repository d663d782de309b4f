"""Optimizer parameter groups: which parameters get weight decay, and layer-wise learning-rate decay.

Weight decay pulls a parameter towards zero. That regularises a weight matrix, but for a bias, a
norm's scale, a position embedding, the [CLS]/mask token, BEiT's relative-position bias tables or
its layer-scale factors (lambda_1/2) zero is not a simpler solution, only a wrong one; timm and the
ViT/BEiT authors exempt them. The Trainer's default exempts biases and norms only.

Layer-wise decay (BEiT, ELECTRA): lower layers hold general features worth keeping, so they move
less. With L blocks, the head (and the final norm, pooler, shared relative-position bias) gets the
learning rate, block i (0-based) lr x decay^(L - i), the embeddings lr x decay^(L + 1).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import torch

from facemask.config.schema import ConfigError

NO_DECAY = re.compile(r"(^|\.)(position_embeddings|cls_token|mask_token|distillation_token|"
                      r"relative_position_bias_table|lambda_1|lambda_2)($|\.)")
# transformers 5 names the blocks `layers.N` (checkpoints keep the original `encoder.layer.N`).
_BLOCK = re.compile(r"(^|\.)(encoder\.layer|layers)\.(\d+)\.")
_EMBEDDINGS = re.compile(r"(^|\.)embeddings\.")


def decays(name: str, param: torch.Tensor) -> bool:
    """Whether weight decay applies: weight matrices and kernels only."""
    return param.ndim > 1 and not NO_DECAY.search(name)


def layer_id(name: str, num_layers: int) -> Optional[int]:
    """0 for the embeddings, i + 1 for block i, num_layers + 1 for what follows the blocks; None
    for a name this scheme does not know (another architecture)."""
    block = _BLOCK.search(name)
    if block:
        return int(block.group(3)) + 1
    if _EMBEDDINGS.search(name):
        return 0
    return num_layers + 1


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float,
                     layer_decay: Optional[float] = None) -> List[Dict[str, Any]]:
    """Groups for a torch optimizer, each with its own `lr` and `weight_decay`, and a `group`
    name such as 'layer 3, decay' (the optimizer ignores it; the log and tests read it)."""
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if layer_decay is not None:
        if num_layers is None or not any(_BLOCK.search(n) for n, _ in model.named_parameters()):
            raise ConfigError(f"'recipe.layer_decay' needs a ViT/BEiT-style encoder (layers.N parameters); "
                              f"{type(model).__name__} has none: set recipe.layer_decay=null")
    groups: Dict[tuple, Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = decays(name, param)
        layer = layer_id(name, num_layers) if layer_decay is not None else None
        scale = layer_decay ** (num_layers + 1 - layer) if layer is not None else 1.0
        key = (layer, decay)
        if key not in groups:
            label = ("all layers" if layer is None else f"layer {layer}") + (", decay" if decay else ", no decay")
            groups[key] = {"params": [], "names": [], "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0,
                           "group": label}
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups, key=lambda k: (-1 if k[0] is None else k[0], not k[1]))]


def describe(groups: List[Dict[str, Any]]) -> str:
    return "; ".join(f"{g['group']}: {len(g['params'])} tensors, lr {g['lr']:.3g}, weight decay {g['weight_decay']:g}"
                     for g in groups)
