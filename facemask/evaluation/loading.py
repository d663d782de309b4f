"""A trained classifier and its image processor from a run folder or a Hub id (resolved by
runtime.source.model_folder), run by PyTorch or, once exported, by onnxruntime.

Nothing is imported at module level that the torch-free runtime lacks: `load_classifier` with an
ONNX backend reaches the runtime (facemask/runtime/) without torch, transformers or datasets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

from facemask.config.schema import ConfigError
from facemask.run_folder import CONFIG, ONNX_DIR, ONNX_FILES, PRETRAINING, read_json
from facemask.runtime.predict import Classifier
from facemask.runtime.source import MODEL_FILES, model_folder


def load_model(model: str, revision: Optional[str] = None, backend: str = "torch",
               folder: Optional[Path] = None) -> Tuple[Any, Any]:
    """Classifier and image processor from a run folder or a Hub id (or its `folder` already
    resolved by model_folder), with a clear error if neither. backend `onnx` / `onnx-int8`: the
    exported graph run by onnxruntime behind the PyTorch model's interface (see onnx_backend.py)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from facemask.evaluation.onnx_backend import load_onnx_classifier
    from facemask.pipeline.processor import BACKEND

    if folder is None:
        onnx = [f"{ONNX_DIR}/{ONNX_FILES[backend]}"] if backend != "torch" else []
        folder = model_folder(model, revision, MODEL_FILES + onnx)
    refuse_without_classifier(model, Path(folder))
    try:
        if backend == "torch":
            classifier = AutoModelForImageClassification.from_pretrained(str(folder))
        else:
            classifier = load_onnx_classifier(folder, backend, model)
        processor = AutoImageProcessor.from_pretrained(str(folder), backend=BACKEND)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot load the model '{model}' from {folder}: {str(err).splitlines()[0]}") from None
    return classifier, processor


def refuse_without_classifier(model: str, folder: Path) -> None:
    """A model saved without a classification head (a pretraining run: an encoder and SimMIM's pixel
    decoder) would load with a fresh random head, and its labels (LABEL_0, ...) match no data: say
    that, not what the mismatch would suggest."""
    architectures = read_json(CONFIG.path(folder)).get("architectures") or []
    pretraining = PRETRAINING.path(folder).is_file()
    if pretraining or (architectures and not any(a.endswith("ForImageClassification") for a in architectures)):
        what = "a pretraining run (masked image modelling)" if pretraining else f"a {', '.join(architectures)}"
        raise ConfigError(f"'{model}' has no classifier to run: it is {what}, an encoder without a classification "
                          f"head. Fine-tune it first (python train.py CONFIG model.name_or_path={model}), then use "
                          "that run")


def load_classifier(model: str, backend: str = "torch", revision: Optional[str] = None,
                    folder: Optional[Path] = None) -> Classifier:
    """What predict, detect and serve classify with: the PyTorch model and its image processor, or
    with an ONNX backend the torch-free runtime's model (facemask.runtime.model), which needs of a
    Hub model only its config, preprocessing and graph."""
    if backend == "torch":
        from facemask.evaluation.predict import TorchClassifier

        return TorchClassifier(*load_model(model, revision, backend, folder))
    from facemask.runtime.model import load_onnx_model

    return load_onnx_model(model, backend, revision, folder)
