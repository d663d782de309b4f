"""An exported classifier (MODEL/onnx/model.onnx or model_quantized.onnx) run by onnxruntime on the
CPU without torch: its labels from config.json, its preprocessing from preprocessor_config.json,
softmax probabilities in numpy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional, Sequence

import numpy as np
from PIL import Image

from facemask.config.schema import ConfigError
from facemask.run_folder import CONFIG, ONNX_DIR, ONNX_FILES
from facemask.runtime.preprocess import Preprocessor
from facemask.runtime.source import graph_files, model_folder


BACKENDS = ("torch", *ONNX_FILES)
# The exported graph's second output (publish/export.py): the pooled feature before the classifier
# head, which select's diverse strategies read; graphs exported before it have `logits` alone.
EMBEDDING_OUTPUT = "embedding"


def add_backend_argument(parser: Any) -> None:
    """--backend, as every command that runs a run's model takes it (predict, detect, select)."""
    parser.add_argument("--backend", choices=list(BACKENDS), default="torch",
                        help="run PyTorch, or the run's exported onnx/model.onnx (or model_quantized.onnx) "
                             "with onnxruntime on the CPU")


def missing_onnxruntime() -> str:
    return "onnxruntime is not installed: pip install -r requirements-serve.txt (or pip install onnxruntime)"


def graph_path(folder: Path, backend: str, source: Optional[str] = None) -> Path:
    """FOLDER/onnx/<the backend's graph>, or a ConfigError saying how to export it. `source` names
    the model in the error when it is a Hub id."""
    if backend not in ONNX_FILES:
        raise ConfigError(f"backend {backend!r} is not an exported graph: choose one of {', '.join(ONNX_FILES)}")
    graph = Path(folder) / ONNX_DIR / ONNX_FILES[backend]
    if not graph.is_file():
        hint = " --quantize int8" if backend == "onnx-int8" else ""
        if source is not None and not Path(source).expanduser().exists():
            raise ConfigError(f"the Hub model '{source}' has no {ONNX_DIR}/{ONNX_FILES[backend]}: export its run "
                              f"(python -m facemask export RUN_DIR{hint}) and push it again")
        raise ConfigError(f"{graph} does not exist: export the run first (python -m facemask export {folder}{hint})")
    return graph


def read_labels(folder: Path) -> List[str]:
    """The class names in id order, from the model's config.json (id2label)."""
    path = CONFIG.path(Path(folder))
    try:
        id2label = json.loads(path.read_text(encoding="utf-8"))["id2label"]
        return [id2label[key] for key in sorted(id2label, key=int)]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"cannot read the class names (id2label) of {path}: {type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else err!r}") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits, in numpy: the one softmax of predict (either backend), detect,
    serve and the evaluation of a split, so that all give the same numbers for the same logits."""
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


class OnnxModel:
    """A Classifier (runtime.predict) over an onnxruntime session."""

    def __init__(self, graph: str | Path, labels: List[str], preprocessor: Preprocessor, threads: int = 0,
                 spinning: bool = True) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError(missing_onnxruntime()) from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        if not spinning:
            # Idle worker threads otherwise spin between runs, taking the cores a caller that decodes
            # the next batch meanwhile needs (select: twice the images/s of a tiny model on 2 cores).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(graph)
        self.session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.labels = labels
        self.preprocessor = preprocessor
        self.input_side = preprocessor.input_side

    @classmethod
    def from_folder(cls, folder: str | Path, backend: str = "onnx", source: Optional[str] = None,
                    threads: int = 0, spinning: bool = True) -> "OnnxModel":
        folder = Path(folder)
        return cls(graph_path(folder, backend, source), read_labels(folder), Preprocessor.from_folder(folder), threads,
                   spinning)

    def logits(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"pixel_values": np.ascontiguousarray(pixel_values, dtype=np.float32)})[0]

    def probabilities(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Each image's class probabilities (images x classes), the graph run a batch at a time."""
        chunks = [np.zeros((0, len(self.labels)), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            logits = self.logits(self.preprocessor(images[start:start + batch_size]))
            chunks.append(softmax(logits.astype(np.float32)))
        return np.concatenate(chunks)


def load_onnx_model(source: str, backend: str = "onnx", revision: Optional[str] = None,
                    folder: Optional[Path] = None, threads: int = 0, spinning: bool = True) -> OnnxModel:
    """The exported graph of a run folder or a Hub model (its config, preprocessing and graph are
    downloaded, not its weights); `folder`: SOURCE already resolved by model_folder."""
    if backend not in ONNX_FILES:
        raise ConfigError(f"backend {backend!r} is not an exported graph: choose one of {', '.join(ONNX_FILES)}")
    folder = folder if folder is not None else model_folder(source, revision, graph_files(backend))
    return OnnxModel.from_folder(folder, backend, source, threads, spinning)
