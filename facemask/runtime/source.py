"""A model named on the command line as a local folder: a run folder as it is, or a Hub model's
files downloaded by huggingface_hub (which needs no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from facemask.config.schema import ConfigError
from facemask.run_folder import CONFIG, ONNX_DIR, ONNX_FILES, PROCESSOR, SHARD_INDEX, SHARDS, WEIGHTS

# What loading a model needs of a run folder or a Hub model: the model files (run_folder.OUTPUTS
# written by Trainer.save_model), and for an ONNX backend its graph.
MODEL_FILES = [o.pattern for o in (CONFIG, WEIGHTS, SHARDS, SHARD_INDEX, PROCESSOR)]
# Hub models this project did not train may hold PyTorch's pickled weights instead.
MODEL_FILES += ["pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json"]


def graph_files(backend: str) -> List[str]:
    """What the torch-free runtime reads of a model: its config (labels), preprocessing and graph,
    not its weights."""
    return [CONFIG.pattern, PROCESSOR.pattern, f"{ONNX_DIR}/{ONNX_FILES[backend]}"]


def model_folder(source: str, revision: Optional[str] = None, patterns: Optional[List[str]] = None) -> Path:
    """SOURCE as a local folder: a run folder as it is, or a Hub model's files matching `patterns`
    (default: the model files) downloaded into huggingface_hub's cache. The one place where
    "a run folder or a Hub id" is decided, for evaluate.py, predict, detect, export's reader and the demo."""
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
