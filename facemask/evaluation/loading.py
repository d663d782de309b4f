"""A trained classifier and its image processor from a run folder or a Hub id, run by PyTorch or,
once exported, by onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

from facemask.config.schema import ConfigError
from facemask.evaluation.onnx_backend import load_onnx_classifier
from facemask.pipeline.processor import BACKEND
from facemask.run_folder import CONFIG, ONNX_DIR, ONNX_FILES, PROCESSOR, SHARD_INDEX, SHARDS, WEIGHTS

# What loading a model needs of a run folder or a Hub model: the model files (run_folder.OUTPUTS
# written by Trainer.save_model), and for an ONNX backend its graph.
MODEL_FILES = [o.pattern for o in (CONFIG, WEIGHTS, SHARDS, SHARD_INDEX, PROCESSOR)]
# Hub models this project did not train may hold PyTorch's pickled weights instead.
MODEL_FILES += ["pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json"]


def model_folder(source: str, revision: Optional[str] = None, patterns: Optional[List[str]] = None) -> Path:
    """SOURCE as a local folder: a run folder as it is, or a Hub model's files matching `patterns`
    (default: the model files) downloaded into huggingface_hub's cache. The one place where
    "a run folder or a Hub id" is decided, for evaluate.py, predict, export's reader and the demo."""
    path = Path(source).expanduser()
    if path.exists():
        if not CONFIG.path(path).is_file():
            raise ConfigError(f"model folder {path} has no config.json: point at a training run's output folder")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=patterns or MODEL_FILES))
    except Exception as err:  # offline and not cached, unknown repository, no access, a malformed id
        raise ConfigError(f"model not found: '{source}' is neither a local run folder nor a Hub model that could be "
                          f"downloaded ({type(err).__name__}: {str(err).splitlines()[0]})") from None


def load_model(model: str, revision: Optional[str] = None, backend: str = "torch",
               folder: Optional[Path] = None) -> Tuple[Any, Any]:
    """Classifier and image processor from a run folder or a Hub id (or its `folder` already
    resolved by model_folder), with a clear error if neither. backend `onnx` / `onnx-int8`: the
    exported graph run by onnxruntime (see onnx_backend.py)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    if folder is None:
        onnx = [f"{ONNX_DIR}/{ONNX_FILES[backend]}"] if backend != "torch" else []
        folder = model_folder(model, revision, MODEL_FILES + onnx)
    try:
        if backend == "torch":
            classifier = AutoModelForImageClassification.from_pretrained(str(folder))
        else:
            classifier = load_onnx_classifier(folder, backend, model)
        processor = AutoImageProcessor.from_pretrained(str(folder), backend=BACKEND)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the model '{model}' from {folder}: {str(err).splitlines()[0]}") from None
    return classifier, processor
