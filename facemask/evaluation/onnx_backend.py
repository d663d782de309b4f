"""An exported model (RUN_DIR/onnx/model.onnx) run by onnxruntime on the CPU, behind the same
interface as the PyTorch classifier, so that `predict`, `evaluate.py` and the export's parity
check feed both the same pixels through the same code."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from transformers.modeling_outputs import ImageClassifierOutput

from facemask.config.schema import ConfigError
from facemask.runtime.model import graph_path, missing_onnxruntime


class OnnxClassifier(torch.nn.Module):
    """logits = session.run(pixel_values); the loss, when labels are given, is plain cross-entropy."""

    def __init__(self, path: str | Path, config: Any) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(missing_onnxruntime()) from None
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.config = config
        # Trainer reads the device and dtype from the parameters; this one holds nothing.
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def run(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **_: Any) -> ImageClassifierOutput:
        logits = torch.from_numpy(self.run(pixel_values.detach().cpu().float().numpy()))
        loss = torch.nn.functional.cross_entropy(logits, labels.cpu()) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def load_onnx_classifier(folder: Path, backend: str, source: Optional[str] = None) -> OnnxClassifier:
    """The exported graph of a model folder (FOLDER/onnx/...): a run folder, or a Hub model's files
    (runtime.source.model_folder). `source` names the model in the error when there is none."""
    from transformers import AutoConfig

    return OnnxClassifier(graph_path(folder, backend, source), AutoConfig.from_pretrained(str(folder)))
