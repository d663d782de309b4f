"""Where in the image a classifier looks: one map per image at the model's patch grid, computed by
captum.

Two methods, one switch (`method`):

- "ablation" (the default): captum's FeatureAblation with one feature per patch. Each patch in
  turn is replaced by a baseline and the map holds how much the target class's log-odds drop. It
  asks the model itself, so it needs no assumption about its inside: ViT, BEiT (relative position
  bias, no absolute position table) and any patch model are treated alike, and a patch the
  decision does not use reads zero. Cost: one forward pass per patch plus one (37 for the
  quickstart's 6x6 grid, 197 for ViT-B/16 at 224 px), batched.
- "gradcam": captum's LayerGradCam on the output of the block before the last, its patch tokens
  laid out as the grid (the class token left out). One forward and one backward pass per image,
  so it suits large models on a CPU; but it reads one layer's gradients, which in a transformer
  mix every patch, and its maps are coarser evidence than an ablation's.

The ablation's baseline (what a removed patch becomes) decides what "removed" means, and no
baseline is neutral (Sturmfels, Lundberg & Lee, "Visualizing the Impact of Feature Attribution
Baselines", Distill 2020): a patch that already looks like the baseline cannot lose anything by
being replaced by it. In this domain the evidence is a mask's colour and shape over the nose and
mouth, and the common mask colours are exactly the constant baselines' (grey, white, black, blue):
with the processor's mean colour (mid-grey after normalisation, the baseline until #40) a
surgical mask replaced by grey stays a mask, and on real photos the maps put the evidence for
with_mask on the eyes and forehead, less of it over the nose and mouth than their share of the
image. The default, "mean", replaces a patch by the image's own mean colour: it brings no colour
the photo does not already have on average, and it removes the patch's shape and colour whole
(the limit of an ever stronger blur). "blur" (a Gaussian blur with sigma a third of the image
side) keeps each region's low-frequency colour, so a blurred mask is still a mask-coloured blob;
"grey" is the old baseline, kept for comparison. bench/explain.py measures all three on real
photos against the landmarks of the nose and mouth (docs/benchmarks.md).

The map's sign: positive where the patch speaks for the target class. The target is the predicted
class unless one is given.

The model randomisation check (Adebayo et al. 2018, "Sanity checks for saliency maps",
`randomisation_check`, `explain --sanity`) compares each map with the map of the same architecture
with fresh random weights, by rank correlation of the signed maps and of their absolute values: a
sign-flipped copy of the same map has a signed correlation of -1 but an absolute one of 1, and a
constant map (no correlation defined) shows nothing the model learned, so it counts as similar.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from facemask.runtime.preprocess import seen_pixels

# torch is imported where it runs: the command's parser stays light (`python -m facemask --help`).
METHODS = ("ablation", "gradcam")
DEFAULT_METHOD = "ablation"
BASELINES = ("mean", "blur", "grey")
DEFAULT_BASELINE = "mean"
# The blur baseline's Gaussian sigma as a share of the image side: 16 px at the quickstart's 48.
_BLUR_SIGMA = 1 / 3
# The randomisation check passes when the mean similarity (the larger of the signed and the
# absolute maps' rank correlations, in absolute value; 1 for a constant map) stays below this.
RANDOMISATION_LIMIT = 0.4
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
    # What an ablated patch became (BASELINES); None for Grad-CAM, which removes nothing.
    baseline: Optional[str] = None


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


def baseline_pixels(pixels: Any, baseline: str = DEFAULT_BASELINE) -> Any:
    """What each patch of `pixels` (the processor's output, images x channels x height x width)
    becomes when the ablation removes it: the image's own mean colour, a blurred copy, or grey (0
    after normalisation: the processor's mean colour)."""
    import torch

    if baseline not in BASELINES:
        raise ValueError(f"unknown ablation baseline {baseline!r}: use {' or '.join(BASELINES)}")
    if baseline == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels).contiguous()
    if baseline == "blur":
        from kornia.filters import gaussian_blur2d

        sigma = max(1.0, _BLUR_SIGMA * min(pixels.shape[-2:]))
        side = 2 * int(3 * sigma) + 1
        # Replicated borders: reflection needs a kernel no wider than the image.
        return gaussian_blur2d(pixels, (side, side), (sigma, sigma), border_type="replicate")
    return torch.zeros_like(pixels)


def attribute(model: Any, pixels: Any, targets: Sequence[int], method: str = DEFAULT_METHOD,
              baseline: str = DEFAULT_BASELINE) -> np.ndarray:
    """Maps (images x rows x columns) of `pixels` (the processor's output) for each image's target."""
    import torch
    from captum.attr import FeatureAblation, LayerGradCam

    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}: use {' or '.join(METHODS)}")
    if baseline not in BASELINES:
        raise ValueError(f"unknown ablation baseline {baseline!r}: use {' or '.join(BASELINES)}")
    side = patch_grid(model)[2]
    # The grid of the pixels given (a processor may differ from config.image_size), whole patches.
    rows, columns = pixels.shape[-2] // side, pixels.shape[-1] // side
    pixels = pixels.to(model.device, model.dtype)
    target = torch.as_tensor(list(targets), device=model.device)
    if method == "ablation":
        with torch.no_grad():
            attributions = FeatureAblation(_log_odds(model)).attribute(
                pixels, baselines=baseline_pixels(pixels, baseline), target=target,
                feature_mask=_patch_mask(rows, columns, side, pixels.device),
                perturbations_per_eval=max(1, _PERTURBED_PER_BATCH // len(pixels)))
        # Every pixel of a patch carries the patch's value: one per patch is the map.
        return attributions[:, 0, ::side, ::side][:, :rows, :columns].float().cpu().numpy()
    with _grid_view(model, rows, columns) as layer:
        maps = LayerGradCam(_log_odds(model), layer).attribute(pixels.requires_grad_(True), target=target)
    return maps[:, 0].detach().float().cpu().numpy()


def seen_images(processor: Any, pixels: Any) -> np.ndarray:
    """The processor's output (a tensor) undone to uint8 RGB (images x height x width x 3)."""
    return seen_pixels(pixels.detach().float().cpu().numpy(), processor)


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
                   batch_size: int = 8, baseline: str = DEFAULT_BASELINE) -> List[Explanation]:
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
            maps = attribute(model, pixels, targets, method, baseline)
            used = baseline if method == "ablation" else None
            for p, t, grid, seen in zip(probs, targets, maps, seen_images(processor, pixels)):
                found.append(Explanation(p, t, grid.astype(np.float32), method, seen, used))
    finally:
        model.train(was_training)  # the Trainer's model goes back as it came
    return found


def trainer_explainer(trainer: Any, method: str = DEFAULT_METHOD) -> Optional[Any]:
    """explain_images bound to a Trainer's model and image processor, for the error gallery; None
    where the model cannot be run whole in one process (FSDP, DeepSpeed shard its weights), it
    has no patch grid or no image processor."""
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        return None
    return model_explainer(trainer.accelerator.unwrap_model(trainer.model), getattr(trainer, "processing_class", None),
                           method)


def model_explainer(model: Any, processor: Any, method: str = DEFAULT_METHOD) -> Optional[Any]:
    """explain_images bound to a model and its image processor; None where the model has no patch
    grid (or, for gradcam, no blocks: an ONNX graph) or there is no processor."""
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
                        help="ablation: each patch replaced by the baseline, one forward pass per patch "
                             "(default); gradcam: Grad-CAM on the block before the last, one backward pass")
    parser.add_argument("--baseline", choices=BASELINES, default=DEFAULT_BASELINE,
                        help="what an ablated patch becomes: the image's own mean colour (default), a blurred copy, "
                             "or grey (the processor's mean colour, which looks like a surgical mask)")
    parser.add_argument("--sanity", action="store_true",
                        help="also run the model randomisation check on these images (the same maps from the "
                             "architecture with random weights: twice the time); its result goes into "
                             "explanations.json, and a failed check makes the exit code 1")
    parser.add_argument("--batch-size", type=int, default=8, help="images explained together")
    parser.add_argument("--overwrite", action="store_true",
                        help="write over an earlier explain's explanations.json and overlays in --output")


def command(args: Any, frame: Optional[Any] = None) -> int:
    """`python -m facemask explain`: exit code 1 if any input was skipped or the --sanity check
    failed, 2 on a bad argument. `frame` (path, image) -> image is the face check (a
    detection.framing.FaceCheck, given by the command line): it sees each image first, may crop it,
    and keeps what it found for the table and the warning."""
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
    baseline = args.baseline if args.method == "ablation" else None
    randomised = reinitialised(model) if args.sanity else None
    rows: List[Dict[str, Any]] = []
    maps: List[Explanation] = []
    random_maps: List[Explanation] = []
    for kept, images in read_batches([p for p in found if p not in inside], draft_side, args.batch_size, skipped):
        if frame is not None:
            images = [frame(path, image) for path, image in zip(kept, images)]
        explained = explain_images(model, processor, images, args.target, args.method, args.batch_size, args.baseline)
        if randomised is not None:
            # The same class as the trained model's map: the check compares evidence for one thing.
            random_maps += explain_images(randomised, processor, images, [m.target for m in explained], args.method,
                                          args.batch_size, args.baseline)
        maps += explained
        for path, found_map in zip(kept, explained):
            name = output_name(path, ".png", taken)
            label, target = labels[int(found_map.probs.argmax())], labels[found_map.target]
            title = f"{path.name}: {label} (p = {found_map.probs.max():.3f}); map: evidence for {target}"
            explanation_png(found_map.seen, found_map.grid, title, out / name)
            row = {"file": str(path), "overlay": name, "label": label, "target": target,
                   "probabilities": {k: round(float(v), 6) for k, v in zip(labels, found_map.probs)},
                   "method": found_map.method, "baseline": found_map.baseline,
                   "map": np.round(found_map.grid, 6).tolist()}
            if frame is not None:
                row["face"] = frame.found.get(str(path))
            rows.append(row)
    grid = list(np.asarray(rows[0]["map"]).shape) if rows else list(patch_grid(model)[:2])
    rows_out = {"model": args.model, "method": args.method, "baseline": baseline, "grid": grid,
                "sign": "positive: the patch speaks for the target class", "images": rows,
                "skipped": [{"file": f, "reason": why} for f, why in skipped]}
    check = randomisation_check(maps, random_maps) if randomised is not None else None
    if check is not None:
        rows_out["sanity"] = check.summary()
    table.write_text(json.dumps(rows_out, indent=1) + "\n", encoding="utf-8")
    print(f"explain: {len(rows)} images, method {args.method}" + (f" (baseline {baseline})" if baseline else "")
          + f", {grid[0]}x{grid[1]} patch grid; wrote {table} and {len(rows)} overlays to {out}")
    if check is not None:
        summary = rows_out["sanity"]
        verdict = "passed" if check.passed else "FAILED: the maps do not show what the model learned"
        print(f"sanity (model randomisation): mean similarity to a random model's maps {summary['similarity']} "
              f"(limit {check.limit}; signed rank correlation {summary['signed_rank_correlation']}, absolute "
              f"{summary['absolute_rank_correlation']}, {summary['constant_maps']} constant maps): {verdict}",
              file=sys.stdout if check.passed else sys.stderr)
    warning = frame.warning("explain", len(rows)) if frame is not None else None
    if warning:
        print(warning, file=sys.stderr)
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    return 1 if skipped or (check is not None and not check.passed) else 0


def reinitialised(model: Any, seed: int = 0) -> Any:
    """The same architecture with fresh random weights: the model randomisation check of Adebayo et
    al. (2018), "Sanity checks for saliency maps", compares a map with this model's."""
    import torch

    torch.manual_seed(seed)
    return type(model)(model.config).to(model.device).eval()


@dataclass
class RandomisationCheck:
    """Each image's Spearman rank correlation between a map and the randomised model's map, of the
    signed maps and of their absolute values (NaN where a map is constant)."""

    signed: np.ndarray
    absolute: np.ndarray
    limit: float = RANDOMISATION_LIMIT

    @property
    def similarity(self) -> np.ndarray:
        """Per image, the larger absolute correlation of the two; 1 where either is undefined: a
        constant map shows nothing that tells the trained model from a random one."""
        both = np.abs(np.stack([self.signed, self.absolute]))
        return np.where(np.isnan(both).any(axis=0), 1.0, np.nan_to_num(both).max(axis=0))

    @property
    def passed(self) -> bool:
        return bool(len(self.signed)) and float(self.similarity.mean()) < self.limit

    def summary(self) -> Dict[str, Any]:
        def mean(values: np.ndarray) -> Optional[float]:
            kept = values[~np.isnan(values)]
            return round(float(kept.mean()), 4) if len(kept) else None

        return {"check": "model randomisation (Adebayo et al. 2018): each map against the map of the same "
                         "architecture with fresh random weights, same image, same class",
                "images": len(self.signed), "signed_rank_correlation": mean(self.signed),
                "absolute_rank_correlation": mean(self.absolute),
                "constant_maps": int(np.isnan(np.stack([self.signed, self.absolute])).any(axis=0).sum()),
                "similarity": round(float(self.similarity.mean()), 4) if len(self.signed) else None,
                "limit": self.limit, "passed": self.passed}


def randomisation_check(first: Sequence[Explanation], second: Sequence[Explanation],
                        limit: float = RANDOMISATION_LIMIT) -> RandomisationCheck:
    """The rank correlations of each image's two maps (`first` the trained model's, `second` the
    randomised one's, same images and classes), signed and absolute."""
    import warnings

    from scipy.stats import ConstantInputWarning, spearmanr

    if len(first) != len(second):
        raise ValueError(f"{len(first)} maps against {len(second)}: the check compares the same images")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)  # a constant map is counted, not warned about
        signed = [spearmanr(a.grid.ravel(), b.grid.ravel()).statistic for a, b in zip(first, second)]
        absolute = [spearmanr(np.abs(a.grid).ravel(), np.abs(b.grid).ravel()).statistic
                    for a, b in zip(first, second)]
    return RandomisationCheck(np.asarray(signed, dtype=np.float64), np.asarray(absolute, dtype=np.float64), limit)


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
