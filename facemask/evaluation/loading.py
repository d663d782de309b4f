"""A trained classifier and its image processor from a run folder or a Hub id, run by PyTorch or,
once exported, by onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

from facemask.config.schema import ConfigError
from facemask.pipeline.processor import BACKEND


def load_model(model: str, revision: Optional[str] = None, backend: str = "torch") -> Tuple[Any, Any]:
    """Classifier and image processor from a run folder or a Hub id, with a clear error if neither.
    backend `onnx` / `onnx-int8`: the exported graph run by onnxruntime (see onnx_backend.py)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    path = Path(model).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ConfigError(f"model folder {path} has no config.json: point at a training run's output folder")
    source = str(path) if path.exists() else model
    try:
        if backend == "torch":
            classifier = AutoModelForImageClassification.from_pretrained(source, revision=revision)
        else:
            from facemask.evaluation.onnx_backend import load_onnx_classifier

            classifier = load_onnx_classifier(source, backend, revision)
        processor = AutoImageProcessor.from_pretrained(source, revision=revision, backend=BACKEND)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model not found: '{model}' is neither a local model folder nor a Hub model that could be loaded "
            f"({str(err).splitlines()[0]})"
        ) from None
    return classifier, processor
