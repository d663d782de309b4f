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

ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model_quantized.onnx"}


def missing_onnxruntime() -> str:
    return "onnxruntime is not installed: pip install -r requirements.txt (or pip install onnxruntime)"


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


def load_onnx_classifier(model: str, backend: str, revision: Optional[str] = None) -> OnnxClassifier:
    """The exported graph of a run folder (RUN_DIR/onnx/...) or a Hub model (its onnx/ folder)."""
    from transformers import AutoConfig

    name = ONNX_FILES[backend]
    path = Path(model).expanduser()
    if path.is_dir():
        graph = path / "onnx" / name
        if not graph.is_file():
            hint = " --quantize int8" if backend == "onnx-int8" else ""
            raise ConfigError(f"{graph} does not exist: export the run first (python -m facemask export {path}{hint})")
        return OnnxClassifier(graph, AutoConfig.from_pretrained(str(path)))
    from huggingface_hub import hf_hub_download

    try:
        graph = hf_hub_download(model, f"onnx/{name}", revision=revision)
        config = AutoConfig.from_pretrained(model, revision=revision)
    except Exception as err:  # offline, missing file, unknown repository
        raise ConfigError(f"cannot load onnx/{name} of '{model}': {str(err).splitlines()[0]}") from None
    return OnnxClassifier(graph, config)
