"""ONNX export with its parity proven on the run's own validation images.

    python -m facemask export RUN_DIR [--opset 18] [--quantize int8] [--output DIR]

torch.onnx's exporter (torch.export, dynamic batch) writes DIR/model.onnx (DIR defaults to
RUN_DIR/onnx, the layout transformers.js and Optimum read beside config.json). onnxruntime then
runs the run's validation images through it and through PyTorch: the export stands only if every
image's logits agree within the tolerance and every top-1 label agrees; else it fails with the
numbers and any earlier export stays as it was. int8 (onnxruntime's dynamic quantization) is kept
only if its accuracy is within --max-accuracy-drop points of PyTorch's; where it runs slower than the
fp32 graph on the exporting machine, the command, parity.json and the card say so and point to
--backend onnx. Everything measured goes to DIR/parity.json, which the card reads.
"""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional

import numpy as np

from facemask.config.loading import load_config
from facemask.config.schema import ConfigError, WorkFailed
from facemask.data.storage import staged
from facemask.run_folder import EXPERIMENT, ONNX_DIR, ONNX_FILES, ONNX_GRAPH, ONNX_INT8, PARITY, write_json

if TYPE_CHECKING:  # torch is imported where it is used: `python -m facemask --help` reads this module's defaults
    import torch

logger = logging.getLogger("facemask")

DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-3
DEFAULT_MAX_ACCURACY_DROP = 0.5  # points
SPEED_BATCH = 32


class ExportError(WorkFailed):
    pass


def parity_images(run_dir: Path, processor: Any, model_config: Any, data: Optional[str] = None,
                  split: str = "validation", max_images: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(pixel_values, label ids in the model's order, source): the run's own split, as its config
    carved it, or the image folder `data`."""
    from facemask.data.images import load_image
    from facemask.data.prepare import prepare_data
    from facemask.evaluation.eval_data import from_prepared, load_eval_data, match_labels, remap_labels
    from facemask.pipeline.processor import processor_image_size

    side = processor_image_size(processor)
    if data is None:
        experiment = EXPERIMENT.path(run_dir)
        if not experiment.is_file():
            raise ConfigError(f"{experiment} does not exist: pass --data FOLDER to check parity on an image folder")
        cfg = load_config(str(experiment))
        # With the config's own audit setting: it decides the duplicate groups the split was carved by.
        evaluation = from_prepared(prepare_data(cfg.data, cfg.seed, side).data, split)
    else:
        evaluation = load_eval_data(data, split)
    id2label = {int(k): v for k, v in model_config.id2label.items()}
    evaluation = remap_labels(evaluation, match_labels(evaluation.labels, id2label), id2label)
    ds = evaluation.dataset
    if max_images is not None and len(ds) > max_images:
        ds = ds.select(range(max_images))
    pixels: List[np.ndarray] = []
    items = ds[evaluation.image_column]
    for start in range(0, len(items), SPEED_BATCH):
        images = [load_image(item, 2 * side) for item in items[start:start + SPEED_BATCH]]
        pixels.append(processor(images, return_tensors="np")["pixel_values"].astype(np.float32))
    source = f"{evaluation.source} ({evaluation.split}, {len(ds)} images)"
    return np.concatenate(pixels), np.asarray(ds[evaluation.label_column]), source


def torch_logits(model: torch.nn.Module, pixels: np.ndarray, batch: int = SPEED_BATCH) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([model(pixel_values=torch.from_numpy(pixels[i:i + batch])).logits.float().numpy()
                               for i in range(0, len(pixels), batch)])


def onnx_logits(classifier: Any, pixels: np.ndarray, batch: int = SPEED_BATCH) -> np.ndarray:
    return np.concatenate([classifier.run(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])


def images_per_second(run: Any, pixels: np.ndarray, repeats: int = 3) -> float:
    """Best of `repeats` passes over up to 4 batches of SPEED_BATCH images (after one warm-up batch)."""
    sample = pixels[: SPEED_BATCH * 4]
    run(sample[:SPEED_BATCH])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(sample)
        best = min(best, time.perf_counter() - start)
    return len(sample) / best


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> Dict[str, Any]:
    top_ref, top_new = reference.argmax(1), candidate.argmax(1)
    return {"max_abs_logit_diff": float(np.abs(reference - candidate).max()),
            "top1_agreement": float((top_ref == top_new).mean()),
            "disagreeing_images": int((top_ref != top_new).sum()),
            "accuracy_pytorch": float((top_ref == labels).mean()),
            "accuracy_onnx": float((top_new == labels).mean())}


def export_graph(model: torch.nn.Module, side: int, path: Path, opset: int) -> None:
    """torch.onnx's exporter (torch.export), with the batch dimension left dynamic.

    The graph is traced with eager attention: BEiT's SDPA path reshapes a transposed tensor, which
    the exporter's decomposition rejects ("Cannot view a tensor with shape ..."), and below opset 23
    ONNX has no attention operator, so either path becomes the same MatMul/Softmax. Parity is then
    checked against the model as it was trained, attention included."""
    import torch

    from facemask.runtime.model import EMBEDDING_OUTPUT

    example = torch.zeros(2, 3, side, side)
    batch = torch.export.Dim("batch", min=1)
    trained_attention = model.config._attn_implementation
    model.set_attn_implementation("eager")
    head = getattr(model, "classifier", None)
    traced, outputs = (_with_embedding(model), ["logits", EMBEDDING_OUTPUT]) if isinstance(head, torch.nn.Module) \
        else (model, ["logits"])
    try:
        with _exporter_quiet():
            program = torch.onnx.export(traced, (), kwargs={"pixel_values": example}, dynamo=True,
                                        opset_version=opset, input_names=["pixel_values"], output_names=outputs,
                                        dynamic_shapes={"pixel_values": {0: batch}}, verbose=False)
    finally:
        model.set_attn_implementation(trained_attention)
    program.save(str(path))
    _drop_stack_traces(path)


def _with_embedding(model: Any) -> Any:
    """The model as a module returning (logits, the input of its classifier head): one graph for both."""
    import torch

    class WithEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: torch.Tensor) -> Any:
            captured: List[torch.Tensor] = []
            hook = self.model.classifier.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
            try:
                logits = self.model(pixel_values=pixel_values).logits
            finally:
                hook.remove()
            return logits, captured[0]

    return WithEmbedding().train(model.training)  # the mode the model was given in, unchanged


@contextmanager
def _exporter_quiet() -> Iterator[None]:
    """Silence the exporter's notes about nothing this export uses: a warning per torchvision
    operator it cannot register (torchvision is no dependency here: no model of ours has its ops)
    and torch's own pytree deprecation, raised inside torch.export. Anything else still shows."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def _drop_stack_traces(path: Path) -> None:
    """The exporter records each node's Python stack trace, which names this machine's files
    (`/home/ana/.venv/lib/.../modeling_vit.py`); the graph is pushed, so they are dropped."""
    import onnx

    graph = onnx.load(str(path))
    for node in graph.graph.node:
        kept = [p for p in node.metadata_props if not p.key.endswith("stack_trace")]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(graph, str(path))


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantization (weights int8, activations quantized per batch),
    after its own pre-processing (symbolic shape inference, graph optimisation), as onnxruntime
    asks: the quantizer then fuses more of the graph (measured on the quickstart's ViT: 15 vs
    17 ms for 32 images, same size)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # The exporter records intermediate shapes traced at the example batch size; shape inference,
    # with the batch dynamic, rejects them. Without them it infers its own.
    graph = onnx.load(str(source))
    del graph.graph.value_info[:]
    shapeless = target.with_name(f".{target.stem}.shapeless.onnx")
    prepared = target.with_name(f".{target.stem}.prepared.onnx")
    onnx.save(graph, str(shapeless))
    try:
        quant_pre_process(str(shapeless), str(prepared))
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    finally:
        shapeless.unlink(missing_ok=True)
        prepared.unlink(missing_ok=True)


def export(run_dir: str | Path, output: Optional[str | Path] = None, opset: int = DEFAULT_OPSET,
           quantize: Optional[str] = None, tolerance: float = DEFAULT_TOLERANCE,
           max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, data: Optional[str] = None,
           split: str = "validation", max_images: Optional[int] = None) -> Dict[str, Any]:
    """Export, check parity (and quantize); returns what parity.json holds."""
    import torch

    from facemask.evaluation.loading import load_model
    from facemask.evaluation.onnx_backend import OnnxClassifier
    from facemask.pipeline.processor import processor_image_size

    run_dir = Path(run_dir)
    out = Path(output) if output else run_dir / ONNX_DIR
    model, processor = load_model(str(run_dir))
    model = model.float().eval()
    pixels, labels, source = parity_images(run_dir, processor, model.config, data, split, max_images)
    out.mkdir(parents=True, exist_ok=True)
    final = out / ONNX_FILES["onnx"]
    with staged(final) as graph:
        export_graph(model, processor_image_size(processor), graph, opset)
        exported = OnnxClassifier(graph, model.config)
        reference = torch_logits(model, pixels)
        fp32 = compare(reference, onnx_logits(exported, pixels), labels)
        if fp32["max_abs_logit_diff"] > tolerance or fp32["disagreeing_images"]:
            raise ExportError(
                f"the ONNX graph does not match PyTorch on {source}: max |logit difference| "
                f"{fp32['max_abs_logit_diff']:.3g} (tolerance {tolerance:g}), top-1 differs on "
                f"{fp32['disagreeing_images']} image(s); accuracy {fp32['accuracy_pytorch']:.4f} (PyTorch) vs "
                f"{fp32['accuracy_onnx']:.4f} (ONNX). Nothing was written to {final}; try another --opset")
        fp32["images_per_s_pytorch"] = images_per_second(lambda x: torch_logits(model, x), pixels)
        fp32["images_per_s_onnx"] = images_per_second(lambda x: onnx_logits(exported, x), pixels)
    # An int8 graph of an earlier export no longer matches model.onnx: only _quantized may put one back.
    int8_path = out / ONNX_FILES["onnx-int8"]
    int8_path.unlink(missing_ok=True)
    result: Dict[str, Any] = {"opset": opset, "exporter": f"torch.onnx (dynamo) {torch.__version__}",
                              "images": source, "tolerance": tolerance, "speed_batch": SPEED_BATCH,
                              "files": [ONNX_GRAPH.name], "fp32": fp32}
    if quantize == "int8":
        result["int8"] = _quantized(final, int8_path, model.config, pixels, labels, reference, fp32, max_accuracy_drop)
        if result["int8"]["kept"]:
            result["files"].append(ONNX_INT8.name)
    write_json(out / PARITY.name.split("/")[-1], result)
    return result


class _NotKept(Exception):
    """Leaves a staged graph unwritten."""


def _quantized(source: Path, target: Path, config: Any, pixels: np.ndarray, labels: np.ndarray,
               reference: np.ndarray, fp32: Dict[str, Any], max_drop: float) -> Dict[str, Any]:
    from facemask.evaluation.onnx_backend import OnnxClassifier

    try:
        with staged(target) as graph:
            quantize_int8(source, graph)
            quantized = OnnxClassifier(graph, config)
            int8 = compare(reference, onnx_logits(quantized, pixels), labels)
            int8["images_per_s_onnx"] = images_per_second(lambda x: onnx_logits(quantized, x), pixels)
            int8["speedup_vs_onnx_fp32"] = int8["images_per_s_onnx"] / fp32["images_per_s_onnx"]
            int8["speedup_vs_pytorch"] = int8["images_per_s_onnx"] / fp32["images_per_s_pytorch"]
            int8["accuracy_drop_points"] = 100 * (int8["accuracy_pytorch"] - int8["accuracy_onnx"])
            int8["max_accuracy_drop_points"] = max_drop
            int8["kept"] = int8["accuracy_drop_points"] <= max_drop
            # Dynamic quantization pays off on CPUs with fast int8 arithmetic and on large models;
            # elsewhere the graph is smaller but slower, and nothing should send users to it.
            int8["faster_than_fp32"] = int8["speedup_vs_onnx_fp32"] > 1
            if not int8["kept"]:
                raise _NotKept
    except _NotKept:
        logger.warning("int8 model removed: its accuracy dropped %.2f points (allowed %.2f, --max-accuracy-drop)",
                       int8["accuracy_drop_points"], max_drop)
    return int8
