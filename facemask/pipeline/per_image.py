"""The per-image input path (`data.preprocess: per_image`): each image opened, augmented and
resized with PIL as it is read, then collated.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from PIL import Image

from facemask.config.schema import DataConfig
from facemask.data.images import load_image
from facemask.pipeline.geometry import INDEX_COLUMN, AugmentationClock, crop_and_flip_in


def make_transforms(processor: Any, cfg: DataConfig, image_column: str, label_column: str,
                    clock: Optional[AugmentationClock] = None) -> tuple[Callable, Callable]:
    """Batch transforms for `Dataset.set_transform`: (train with augmentation, evaluation).

    With a clock, the train split must carry INDEX_COLUMN; without one, Python's global RNG is used.
    Random crops are drawn within the part of the image the processor keeps (`input_region`) and
    resized straight to the model's square, as the cached path does.
    """
    from facemask.pipeline.processor import input_region, processor_image_size, square_resize

    # Twice the model's input keeps a random crop of half the area at full resolution.
    draft_side = 2 * processor_image_size(processor)
    crop_to_input = square_resize(processor)

    def _encode(images: List[Image.Image], batch: Dict[str, List[Any]], **resize: Any) -> Dict[str, Any]:
        pixel_values = processor(images, return_tensors="pt", **resize)["pixel_values"]
        return {"pixel_values": pixel_values, "labels": batch[label_column]}

    def train_transform(batch: Dict[str, List[Any]]) -> Dict[str, Any]:
        images = []
        indices = batch.get(INDEX_COLUMN) or [None] * len(batch[image_column])
        for item, index in zip(batch[image_column], indices):
            image = load_image(item, draft_side)
            if cfg.augment:
                gen = clock.generator(index) if clock is not None and index is not None else None
                region = input_region(processor, image.width, image.height)
                box, flip = crop_and_flip_in(region, cfg, gen)
                image = image.crop(box)
                if flip:
                    image = image.transpose(Image.FLIP_LEFT_RIGHT)
            images.append(image)
        return _encode(images, batch, **(crop_to_input if cfg.augment else {}))

    def eval_transform(batch: Dict[str, List[Any]]) -> Dict[str, Any]:
        return _encode([load_image(item, draft_side) for item in batch[image_column]], batch)

    return train_transform, eval_transform


def collate(examples: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }
