"""Masked image modelling for `python -m facemask pretrain`: SimMIM (Xie et al., 2022) on ViT and
BEiT. A random share of the image's mask patches is replaced by a learned mask token before the
encoder; a 1x1 convolution and a pixel shuffle predict the pixels back; the loss is the L1 error on
the masked pixels alone.

ViT uses transformers' own `ViTForMaskedImageModeling`. BEiT's own head (`BeitForMaskedImageModeling`)
predicts the visual tokens of a DALL-E tokenizer that cannot be downloaded here, so BEiT gets the
same pixel head on `BeitModel` (`BeitForSimMIM`, the smallest honest alternative: SimMIM's paper
pretrains both architectures this way). Either run folder loads into the classifier with
`from_pretrained`: the encoder's weights keep their names (vit.*, beit.*), the head (decoder.*) and
the mask token are left behind.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from transformers import AutoConfig, BeitConfig, PretrainedConfig, PreTrainedModel, ViTForMaskedImageModeling
from transformers.modeling_outputs import MaskedImageModelingOutput
from transformers.models.beit.modeling_beit import BeitModel, BeitPreTrainedModel

from facemask.config.schema import ConfigError, ExperimentConfig, ModelConfig, PretrainConfig
from facemask.pipeline.processor import from_config_fields
from facemask.training.modeling import check_config_overrides, loading_quietly
from facemask.training.trainer import FaceMaskTrainer

ROUTES = ("vit", "beit")  # model types with a masked-image-modelling route here


def _pixel_loss(pixels: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """SimMIM's loss, as ViTForMaskedImageModeling computes it: mean L1 over the masked pixels."""
    side = pixels.shape[-1] // patch
    pixel_mask = mask.reshape(-1, side, side).repeat_interleave(patch, 1).repeat_interleave(patch, 2).unsqueeze(1)
    error = nn.functional.l1_loss(pixels, reconstruction, reduction="none")
    return (error * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / pixels.shape[1]


class BeitForSimMIM(BeitPreTrainedModel):
    """BEiT's encoder with SimMIM's pixel head (ViTForMaskedImageModeling's, on BeitModel)."""

    def __init__(self, config: BeitConfig) -> None:
        super().__init__(config)
        self.beit = BeitModel(config, add_pooling_layer=False)
        self.decoder = nn.Sequential(
            nn.Conv2d(config.hidden_size, config.patch_size ** 2 * config.num_channels, kernel_size=1),
            nn.PixelShuffle(config.patch_size),
        )
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: Optional[torch.BoolTensor] = None,
                **kwargs: Any) -> MaskedImageModelingOutput:
        tokens = self.beit(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state[:, 1:]
        batch, length, width = tokens.shape
        side = math.isqrt(length)
        reconstruction = self.decoder(tokens.permute(0, 2, 1).reshape(batch, width, side, side))
        loss = None
        if bool_masked_pos is not None:
            loss = _pixel_loss(pixel_values, reconstruction, bool_masked_pos, self.config.patch_size)
        return MaskedImageModelingOutput(loss=loss, reconstruction=reconstruction)


def pretraining_config(cfg: ModelConfig) -> PretrainedConfig:
    """The model's config with what masking needs: a mask token, and (ViT) a decoder stride of one
    patch. A model type without a route here is a ConfigError, before anything is read."""
    overrides = dict(cfg.config_overrides or {})
    if cfg.name_or_path is not None:
        try:
            config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision, cache_dir=cfg.cache_dir)
        except (OSError, ValueError) as err:
            raise ConfigError(f"'model.name_or_path' {cfg.name_or_path}: no model config found ({str(err).splitlines()[0]})") from None
    else:
        model_type, fields = from_config_fields(cfg)
        config = AutoConfig.for_model(model_type, **fields)
    if config.model_type not in ROUTES:
        raise ConfigError(f"model type {config.model_type!r} has no masked-image-modelling route here: pretrain "
                          f"supports {' and '.join(ROUTES)} (SimMIM's pixel regression)")
    check_config_overrides(config, overrides)
    for key, value in overrides.items():
        setattr(config, key, value)
    if config.model_type == "vit":
        config.encoder_stride = config.patch_size
    else:
        config.use_mask_token = True
    return config


def check_masking(p: PretrainConfig, config: PretrainedConfig) -> None:
    """The mask patches tile the image, each a whole number of model patches."""
    image, patch, unit = int(config.image_size), int(config.patch_size), p.mask_patch_size
    if unit % patch or image % unit:
        fits = [k * patch for k in range(1, image // patch + 1) if image % (k * patch) == 0]
        raise ConfigError(f"'pretrain.mask_patch_size' is {unit}: it must be a whole number of the model's {patch}-pixel "
                          f"patches and divide its {image}-pixel image into whole mask patches; sizes that fit: "
                          f"{', '.join(map(str, fits))}")


def check_pretraining(cfg: ExperimentConfig) -> PretrainedConfig:
    """The model's pretraining config, its route and masking checked: a ConfigError before any work."""
    if cfg.model.peft is not None:
        raise ConfigError("'model.peft' is for fine-tuning: pretraining trains the whole encoder; remove model.peft")
    config = pretraining_config(cfg.model)
    check_masking(cfg.pretrain, config)
    return config


def build_pretraining_model(cfg: ExperimentConfig) -> PreTrainedModel:
    """The encoder with SimMIM's head: random init (model.from_config) or a checkpoint's encoder
    with a new head (model.name_or_path: continued pretraining)."""
    config = check_pretraining(cfg)
    cls = ViTForMaskedImageModeling if config.model_type == "vit" else BeitForSimMIM
    if cfg.model.name_or_path is None:
        return cls(config)
    return loading_quietly(cls, cfg.model, config=config)


class MaskGenerator:
    """SimMIM's masks: `ratio` of the mask patches (mask_patch_size pixels a side) chosen at random
    per image, spread to the model's patches; (batch, patches) booleans, True where masked."""

    def __init__(self, image_size: int, patch_size: int, mask_patch_size: int, ratio: float) -> None:
        self.units = (image_size // mask_patch_size) ** 2
        self.side = image_size // mask_patch_size
        self.scale = mask_patch_size // patch_size
        self.count = int(math.ceil(self.units * ratio))

    def __call__(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        order = torch.rand(batch, self.units, generator=generator).argsort(dim=1)
        mask = torch.zeros(batch, self.units, dtype=torch.bool)
        mask.scatter_(1, order[:, :self.count], True)
        grid = mask.reshape(batch, self.side, self.side)
        return grid.repeat_interleave(self.scale, 1).repeat_interleave(self.scale, 2).reshape(batch, -1)


class PretrainingTrainer(FaceMaskTrainer):
    """FaceMaskTrainer (its inputs, checkpoints and resume) for masked image modelling: each batch
    gets its masks, and the loss is the model's own. Training masks come from torch's random state
    (restored on --resume); every evaluation draws the same masks, so its losses compare."""

    def __init__(self, *args: Any, masks: MaskGenerator, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.masks = masks
        self._eval_masks: Optional[torch.Generator] = None

    def _prepare_inputs(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        pixels = super()._prepare_inputs(inputs)["pixel_values"]
        generator = None if self.model.training else self._eval_masks
        return {"pixel_values": pixels, "bool_masked_pos": self.masks(len(pixels), generator).to(pixels.device)}

    def compute_loss(self, model: Any, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def prediction_step(self, model: Any, inputs: Dict[str, Any], prediction_loss_only: bool,
                        ignore_keys: Optional[List[str]] = None) -> tuple:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = model(**inputs).loss
        return loss.detach(), None, None

    def evaluate(self, *args: Any, **kwargs: Any) -> Dict[str, float]:
        self._eval_masks = torch.Generator().manual_seed(self.args.seed)
        return super().evaluate(*args, **kwargs)

    def reconstruct(self, count: int) -> Dict[str, torch.Tensor]:
        """The first `count` evaluation images (training images where there is no validation
        split), as the model saw them, their masks and its reconstructions, on the CPU."""
        train_view = self.eval_dataset is None
        loader = self.get_train_dataloader() if train_view else self.get_eval_dataloader()
        self._eval_masks = torch.Generator().manual_seed(self.args.seed)
        self.model.train(train_view)  # training batches are cropped to the model's side by the training view
        batch = self._prepare_inputs(next(iter(loader)))
        self.model.eval()
        with torch.no_grad():
            out = self.model(**{k: v[:count] for k, v in batch.items()})
        return {"pixel_values": batch["pixel_values"][:count].float().cpu(),
                "mask": batch["bool_masked_pos"][:count].cpu(), "reconstruction": out.reconstruction.float().cpu()}


def build_pretraining_trainer(model: PreTrainedModel, args: Any, pipeline: Any, processor: Any,
                              cfg: ExperimentConfig) -> PretrainingTrainer:
    """The Trainer of a pretraining run: the run's inputs (labels unused), no recipe, no metrics
    but the evaluation loss."""
    from transformers import TrainerCallback

    from facemask.pipeline.inputs import AugmentationEpochCallback
    from facemask.training import console

    config = model.config
    masks = MaskGenerator(int(config.image_size), int(config.patch_size), cfg.pretrain.mask_patch_size,
                          cfg.pretrain.mask_ratio)
    callbacks: List[TrainerCallback] = [AugmentationEpochCallback(pipeline.clock)]
    trainer = PretrainingTrainer(model=model, args=args, train_dataset=pipeline.splits["train"],
                                 eval_dataset=pipeline.splits.get("validation"), data_collator=pipeline.collate,
                                 processing_class=processor, callbacks=callbacks,
                                 batch_transform=pipeline.batch_transform, masks=masks)
    console.install(trainer)
    return trainer
