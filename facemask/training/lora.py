"""LoRA through peft: the checkpoint's weights stay frozen; low-rank adapters on the attention
projections and the whole classification head are trained.

The run folder holds the merged model at its top level, so `pipeline()`, evaluate.py, predict,
export, detect and the demo load it as any other run, and the adapter in adapter/: a top-level
adapter_config.json would make transformers (with peft installed) apply the adapter again on top
of the merged weights. The evaluation at the end of training measures the merged model, the one
that is saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List

import torch

from facemask.config.schema import ConfigError, PeftConfig
from facemask.run_folder import ADAPTER_DIR

logger = logging.getLogger("facemask")

# transformers 5's names of the attention projections of ViT and BEiT (checkpoints on the Hub say
# query/key/value/output.dense; loading converts them).
ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
HEAD = ["classifier"]  # trained in full: it is new (or relabelled) in every fine-tuning


def add_adapters(model: torch.nn.Module, cfg: PeftConfig) -> Any:
    """`model` wrapped as a peft model with adapters on `cfg.target_modules` (default: the
    attention projections) and its head trainable; every other weight frozen."""
    from peft import LoraConfig, get_peft_model

    targets = list(cfg.target_modules or ATTENTION_PROJECTIONS)
    found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    missing = [t for t in targets if t not in found]
    if missing:
        raise ConfigError(f"'model.peft.target_modules': {type(model).__name__} has no linear layer named "
                          f"{', '.join(missing)}; its linear layers are: {', '.join(sorted(found))}")
    config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                        modules_to_save=HEAD, bias="none")
    wrapped = get_peft_model(model, config)
    record = adapter_record(wrapped, cfg)
    logger.info("LoRA (r=%d, alpha=%g) on %s: %s of %s parameters trained (%.2f%%)", cfg.r, cfg.alpha,
                ", ".join(targets), f"{record['trainable_parameters']:,}", f"{record['total_parameters']:,}",
                100 * record["trainable_share"])
    return wrapped


def is_adapted(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def adapter_record(model: Any, cfg: PeftConfig) -> Dict[str, Any]:
    """What run_info.json and the card say of the adapter: method, rank, scale, targets, and the
    trained parameters with their share of the model's (the base model's, the frozen head copy
    peft keeps aside not counted)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = model.get_base_model()
    adapters = sum(p.numel() for n, p in base.named_parameters() if "lora_" in n or "original_module" in n)
    total = sum(p.numel() for p in base.parameters()) - adapters + trainable - _head_copy(base)
    return {"method": cfg.method, "r": cfg.r, "alpha": cfg.alpha, "dropout": cfg.dropout,
            "target_modules": list(cfg.target_modules or ATTENTION_PROJECTIONS),
            "trainable_parameters": trainable, "total_parameters": total, "trainable_share": trainable / total}


def _head_copy(base: torch.nn.Module) -> int:
    """The trained copy of the head, counted once among the trainable parameters already."""
    return sum(p.numel() for n, p in base.named_parameters() if "modules_to_save" in n)


def merge_for_saving(trainer: Any) -> List[Path]:
    """Writes the adapter (and trained head) to RUN/adapter/, then replaces the trainer's model by
    the merged one, which `trainer.save_model()` then writes as the run's model. Every process
    merges (each evaluates); the main one writes."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not is_adapted(model):
        return []
    folder = Path(trainer.args.output_dir) / ADAPTER_DIR
    written: List[Path] = []
    if trainer.args.should_save:
        model.save_pretrained(folder)
        # peft writes a stub model card beside the adapter; the run's card (README.md) is the one.
        (folder / "README.md").unlink(missing_ok=True)
        written = sorted(folder.iterdir())
    merged = model.merge_and_unload()
    trainer.model = trainer.model_wrapped = merged
    # The average was copied into the adapter at the end of training; its names are peft's, which
    # the merged model no longer has.
    trainer.ema = None
    logger.info("merged the adapter into the model; the adapter alone is in %s", folder)
    return written
