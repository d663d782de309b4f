"""Where in the image a classifier looks: one map per image at the model's patch grid, computed by
captum.

Two methods, one switch (`method`):

- "ablation" (the default): captum's FeatureAblation with one feature per patch. Each patch in
  turn is replaced by the processor's mean colour (zero after normalisation) and the map holds how
  much the target class's log-odds drop. It asks the model itself, so it needs no assumption about
  its inside: ViT, BEiT (relative position bias, no absolute position table) and any patch model
  are treated alike, and a patch the decision does not use reads zero. Cost: one forward pass per
  patch plus one (37 for the quickstart's 6x6 grid, 197 for ViT-B/16 at 224 px), batched.
- "gradcam": captum's LayerGradCam on the output of the block before the last, its patch tokens
  laid out as the grid (the class token left out). One forward and one backward pass per image,
  so it suits large models on a CPU; but it reads one layer's gradients, which in a transformer
  mix every patch, and its maps are coarser evidence than an ablation's.

The map's sign: positive where the patch speaks for the target class. The target is the predicted
class unless one is given.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

# torch is imported where it runs: the command's parser stays light (`python -m facemask --help`).
METHODS = ("ablation", "gradcam")
DEFAULT_METHOD = "ablation"
# How many perturbed copies go through the model at once: bounded so that ViT-B/16 stays within a
# few GB on a CPU, while the quickstart's whole grid of one image is one batch.
_PERTURBED_PER_BATCH = 64


@dataclass
class Explanation:
    """One image's map: `grid` (patch rows x patch columns, float32) for class `target`."""

    probs: np.ndarray
    target: int
    grid: np.ndarray
    method: str
    # The image as the model saw it (after resizing/cropping), uint8 RGB: the map's own geometry.
    seen: np.ndarray


def patch_grid(model: Any) -> Tuple[int, int, int]:
    """(rows, columns, patch side) of a patch model's input: image_size / patch_size."""
    config = model.config
    size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
    if size is None or patch is None:
        raise ValueError(f"{type(model).__name__} has no image_size/patch_size: explanation maps need a patch model "
                         "(ViT, BEiT, DeiT, ...)")
    height, width = (size, size) if isinstance(size, int) else size
    side = patch if isinstance(patch, int) else patch[0]
    return height // side, width // side, side


def _log_odds(model: Any) -> Any:
    """The model as a function of pixels to each class's log-odds (its logit against the log-sum-exp
    of the others): unlike a probability it does not saturate, so a confident model's patches still
    differ."""

    import torch

    def forward(pixels: Any) -> Any:
        logits = model(pixel_values=pixels).logits.float()
        others = torch.stack([torch.logsumexp(torch.cat([logits[:, :k], logits[:, k + 1:]], dim=1), dim=1)
                              for k in range(logits.shape[1])], dim=1)
        return logits - others

    return forward


def _patch_mask(rows: int, columns: int, side: int, device: Any) -> Any:
    import torch

    ids = torch.arange(rows * columns, device=device).reshape(rows, columns)
    return ids.repeat_interleave(side, 0).repeat_interleave(side, 1)[None, None]


def _blocks(model: Any) -> Any:
    """The transformer blocks of a ViT-like model, for Grad-CAM: `layers` in transformers 5 (ViT,
    BEiT, DeiT), `encoder.layer` in others (DINOv2, remote code)."""
    base = model.base_model
    blocks = getattr(base, "layers", None)
    if blocks is None:
        blocks = getattr(getattr(base, "encoder", None), "layer", None)
    if blocks is None or len(blocks) < 2:
        raise ValueError(f"{type(model).__name__} has no list of 2 transformer blocks or more: use method 'ablation'")
    return blocks


@contextlib.contextmanager
def _grid_view(model: Any, rows: int, columns: int) -> Iterator[Any]:
    """The block before the last, wrapped so that an identity module inside it sees its patch
    tokens as (batch, channels, rows, columns): what Grad-CAM's channel weights and spatial map are
    defined on. The class token (and any other) passes by; the block is put back afterwards."""
    import torch

    class TokensAsGrid(torch.nn.Module):
        def __init__(self, block: torch.nn.Module) -> None:
            super().__init__()
            self.block, self.grid = block, torch.nn.Identity()

        def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            out = self.block(hidden, *args, **kwargs)
            tokens = out[0] if isinstance(out, tuple) else out
            batch, count, channels = tokens.shape
            first = count - rows * columns
            grid = self.grid(tokens[:, first:].transpose(1, 2).reshape(batch, channels, rows, columns))
            tokens = torch.cat([tokens[:, :first], grid.reshape(batch, channels, -1).transpose(1, 2)], dim=1)
            return (tokens, *out[1:]) if isinstance(out, tuple) else tokens

    blocks = _blocks(model)
    position = len(blocks) - 2
    original = blocks[position]
    wrapped = TokensAsGrid(original)
    blocks[position] = wrapped
    try:
        yield wrapped.grid
    finally:
        blocks[position] = original


def attribute(model: Any, pixels: Any, targets: Sequence[int], method: str = DEFAULT_METHOD) -> np.ndarray:
    """Maps (images x rows x columns) of `pixels` (the processor's output) for each image's target."""
    import torch
    from captum.attr import FeatureAblation, LayerGradCam

    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}: use {' or '.join(METHODS)}")
    side = patch_grid(model)[2]
    # The grid of the pixels given (a processor may differ from config.image_size), whole patches.
    rows, columns = pixels.shape[-2] // side, pixels.shape[-1] // side
    pixels = pixels.to(model.device, model.dtype)
    target = torch.as_tensor(list(targets), device=model.device)
    if method == "ablation":
        with torch.no_grad():
            attributions = FeatureAblation(_log_odds(model)).attribute(
                pixels, baselines=0.0, target=target, feature_mask=_patch_mask(rows, columns, side, pixels.device),
                perturbations_per_eval=max(1, _PERTURBED_PER_BATCH // len(pixels)))
        # Every pixel of a patch carries the patch's value: one per patch is the map.
        return attributions[:, 0, ::side, ::side][:, :rows, :columns].float().cpu().numpy()
    with _grid_view(model, rows, columns) as layer:
        maps = LayerGradCam(_log_odds(model), layer).attribute(pixels.requires_grad_(True), target=target)
    return maps[:, 0].detach().float().cpu().numpy()


def seen_images(processor: Any, pixels: Any) -> np.ndarray:
    """The processor's output undone to uint8 RGB (images x height x width x 3)."""
    mean = np.asarray(getattr(processor, "image_mean", None) or [0.0, 0.0, 0.0], dtype=np.float32)
    std = np.asarray(getattr(processor, "image_std", None) or [1.0, 1.0, 1.0], dtype=np.float32)
    values = pixels.detach().float().cpu().numpy().transpose(0, 2, 3, 1) * std + mean
    scale = 1.0 if getattr(processor, "do_rescale", True) is False else 255.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def resolve_target(model: Any, target: Union[None, str, int]) -> Optional[int]:
    """None for "the predicted class", else the class number of a class name or number."""
    if target is None or target == "predicted":
        return None
    names = {name: int(k) for k, name in model.config.id2label.items()}
    if isinstance(target, str) and target in names:
        return names[target]
    if str(target).isdigit() and int(target) in model.config.id2label:
        return int(target)
    raise ValueError(f"unknown target class {target!r}: use 'predicted' or one of {', '.join(names)}")


def explain_images(model: Any, processor: Any, images: Sequence[Any],
                   target: Union[None, str, int, Sequence[int]] = None, method: str = DEFAULT_METHOD,
                   batch_size: int = 8) -> List[Explanation]:
    """Each PIL image's class probabilities and map for `target` (default: its predicted class; a
    sequence: each image's own class number), through the same processor the model is evaluated
    with."""
    import torch

    was_training = model.training
    model.eval()
    try:
        per_image = list(target) if isinstance(target, (list, tuple, np.ndarray)) else None
        fixed = None if per_image is not None else resolve_target(model, target)
        found: List[Explanation] = []
        for start in range(0, len(images), batch_size):
            pixels = processor(list(images[start:start + batch_size]), return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                logits = model(pixel_values=pixels.to(model.device, model.dtype)).logits.float()
            probs = torch.softmax(logits, dim=-1).cpu().numpy()
            if per_image is not None:
                targets = [int(t) for t in per_image[start:start + len(probs)]]
            else:
                targets = [int(p.argmax()) if fixed is None else fixed for p in probs]
            maps = attribute(model, pixels, targets, method)
            for p, t, grid, seen in zip(probs, targets, maps, seen_images(processor, pixels)):
                found.append(Explanation(p, t, grid.astype(np.float32), method, seen))
    finally:
        model.train(was_training)  # the Trainer's model goes back as it came
    return found


def trainer_explainer(trainer: Any, method: str = DEFAULT_METHOD) -> Optional[Any]:
    """explain_images bound to a Trainer's model and image processor, for the error gallery; None
    where the model cannot be run whole in one process (FSDP, DeepSpeed shard its weights), it
    has no patch grid or no image processor."""
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    processor = getattr(trainer, "processing_class", None)
    try:
        patch_grid(model)
        if method == "gradcam":
            _blocks(model)  # an ONNX graph has no blocks to wrap
    except ValueError:
        return None
    if processor is None:
        return None
    return lambda images, targets: explain_images(model, processor, images, list(targets), method)


def add_arguments(parser: Any) -> None:
    parser.add_argument("model", help="a training run's output folder or a Hub model id")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive) or globs")
    parser.add_argument("--output", default="explanations",
                        help="folder for explanations.json and one overlay PNG per image (default ./explanations)")
    parser.add_argument("--target", default="predicted",
                        help="the class whose evidence is mapped: 'predicted' (each image's own) or a class name")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                        help="ablation: each patch replaced by the mean colour, one forward pass per patch "
                             "(default); gradcam: Grad-CAM on the block before the last, one backward pass")
    parser.add_argument("--batch-size", type=int, default=8, help="images explained together")
    parser.add_argument("--overwrite", action="store_true",
                        help="write over an earlier explain's explanations.json and overlays in --output")


def command(args: Any) -> int:
    """`python -m facemask explain`: exit code 1 if any input was skipped, 2 on a bad argument."""
    import json
    import sys
    from pathlib import Path

    from facemask.config.schema import ConfigError
    from facemask.evaluation.figures import explanation_png
    from facemask.evaluation.loading import load_model
    from facemask.evaluation.predict import class_labels
    from facemask.runtime.files import collect_paths, read_batches
    from facemask.pipeline.processor import processor_image_size
    from facemask.run_folder import EXPLANATIONS_JSON, output_name

    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file: name a folder")
    table = out / EXPLANATIONS_JSON
    if table.exists() and not args.overwrite:
        raise ConfigError(f"{table} exists from an earlier run: pass --overwrite to write over it and the overlays "
                          "of the same names, or choose another --output")
    model, processor = load_model(args.model)
    try:
        patch_grid(model)
        resolve_target(model, args.target)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    labels = class_labels(model)
    found, skipped = collect_paths(args.inputs)
    inside = [p for p in found if out.resolve() in p.resolve().parents]
    skipped += [(str(p), f"it is inside the output folder {out}: explain would read its own output") for p in inside]
    draft_side = 2 * processor_image_size(processor)
    out.mkdir(parents=True, exist_ok=True)
    taken = {EXPLANATIONS_JSON.lower()} | ({p.name.lower() for p in out.iterdir()} if not args.overwrite else set())
    rows: List[Dict[str, Any]] = []
    for kept, images in read_batches([p for p in found if p not in inside], draft_side, args.batch_size, skipped):
        for path, found_map in zip(kept, explain_images(model, processor, images, args.target, args.method,
                                                        args.batch_size)):
            name = output_name(path, ".png", taken)
            label, target = labels[int(found_map.probs.argmax())], labels[found_map.target]
            title = f"{path.name}: {label} (p = {found_map.probs.max():.3f}); map: evidence for {target}"
            explanation_png(found_map.seen, found_map.grid, title, out / name)
            rows.append({"file": str(path), "overlay": name, "label": label, "target": target,
                         "probabilities": {k: round(float(v), 6) for k, v in zip(labels, found_map.probs)},
                         "method": found_map.method, "map": np.round(found_map.grid, 6).tolist()})
    grid = list(np.asarray(rows[0]["map"]).shape) if rows else list(patch_grid(model)[:2])
    rows_out = {"model": args.model, "method": args.method, "grid": grid,
                "sign": "positive: the patch speaks for the target class", "images": rows,
                "skipped": [{"file": f, "reason": why} for f, why in skipped]}
    table.write_text(json.dumps(rows_out, indent=1) + "\n", encoding="utf-8")
    print(f"explain: {len(rows)} images, method {args.method}, {grid[0]}x{grid[1]} "
          f"patch grid; wrote {table} and {len(rows)} overlays to {out}")
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    return 1 if skipped else 0


def reinitialised(model: Any, seed: int = 0) -> Any:
    """The same architecture with fresh random weights: the model randomisation check of Adebayo et
    al. (2018), "Sanity checks for saliency maps", compares a map with this model's."""
    import torch

    torch.manual_seed(seed)
    return type(model)(model.config).to(model.device).eval()


def rank_correlations(first: Sequence[Explanation], second: Sequence[Explanation]) -> np.ndarray:
    """Spearman's rank correlation of each image's two maps (NaN where a map is constant)."""
    from scipy.stats import spearmanr

    return np.array([spearmanr(a.grid.ravel(), b.grid.ravel()).statistic for a, b in zip(first, second)])


def share_inside(grid: np.ndarray, region: np.ndarray) -> Optional[float]:
    """The share of a map's positive attribution that falls inside `region` (booleans at the seen
    image's size: each patch counted by the part of it the region covers); None without any."""
    rows, columns = grid.shape
    height, width = region.shape
    cover = region[:height - height % rows, :width - width % columns].reshape(
        rows, height // rows, columns, width // columns).mean(axis=(1, 3))
    positive = np.clip(grid, 0, None)
    total = float(positive.sum())
    return float((positive * cover).sum()) / total if total > 0 else None
