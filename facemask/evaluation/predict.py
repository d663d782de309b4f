"""Classifying images with the PyTorch model (or the ONNX graph behind its interface): class
probabilities in batches through the image processor, as a runtime Classifier, so that predict,
detect and the demo share the rows and the decision rule of facemask/runtime/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from facemask.pipeline.processor import processor_image_size
from facemask.runtime import predict as runtime_predict
from facemask.runtime.model import softmax


def prediction_rows(names: List[str], label_ids: np.ndarray, probs: np.ndarray, labels: List[str],
                    digests: Optional[List[Optional[str]]] = None) -> List[Dict]:
    """A split's predictions, a row per image. `digests`: each image's content SHA-256 (its
    inspection's; empty without one), the image's identity where `file` is only a row index (drawn
    set, Hub data): label-issues matches each fold's predictions to the training images by it."""
    rows = []
    for k, (name, true, p) in enumerate(zip(names, label_ids, probs)):
        row = {"file": name, "sha256": (digests[k] if digests else None) or "", "true_label": labels[int(true)],
               "predicted_label": labels[int(p.argmax())]}
        row.update({f"prob_{label}": round(float(v), 6) for label, v in zip(labels, p)})
        rows.append(row)
    return rows


def class_labels(model: Any) -> List[str]:
    return [model.config.id2label[i] for i in sorted(model.config.id2label)]


def class_probabilities(model: Any, processor: Any, images: Sequence[Image.Image], batch_size: int = 32,
                        seen: bool = False) -> np.ndarray:
    """Each image's class probabilities (images x classes): the processor's preprocessing, in batches.
    `seen`: the images are already resized and cropped as the processor does (the model's view of
    them, as the robustness test corrupts them), so they are only rescaled and normalised."""
    model.eval()
    chunks = [np.zeros((0, len(model.config.id2label)), dtype=np.float32)]
    as_seen = {"do_resize": False, **({"do_center_crop": False} if hasattr(processor, "do_center_crop") else {})}
    for start in range(0, len(images), batch_size):
        with torch.no_grad():
            pixels = processor(list(images[start:start + batch_size]), return_tensors="pt",
                               **(as_seen if seen else {}))["pixel_values"]
            logits = model(pixel_values=pixels.to(model.device, model.dtype)).logits.float()
        chunks.append(softmax(logits.cpu().numpy()))
    return np.concatenate(chunks)


@dataclass
class TorchClassifier:
    """A model with `config.id2label` and its image processor as a runtime.predict.Classifier."""

    model: Any
    processor: Any
    labels: List[str] = field(init=False)
    input_side: int = field(init=False)

    def __post_init__(self) -> None:
        self.labels = class_labels(self.model)
        self.input_side = processor_image_size(self.processor)

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        return class_probabilities(self.model, self.processor, images, batch_size)


def predict_files(model: Any, processor: Any, paths: List[Path], batch_size: int = 32,
                  threshold: Optional[float] = None, positive_label: Optional[str] = None
                  ) -> Tuple[List[Dict[str, Any]], List[Tuple[str, str]]]:
    """runtime.predict.predict_files with the model and its image processor."""
    return runtime_predict.predict_files(TorchClassifier(model, processor), paths, batch_size, threshold,
                                         positive_label)
