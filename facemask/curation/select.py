"""`python -m facemask select RUN POOL --budget N`: the N images of an unlabelled folder to label next.

Every file of POOL is read once: its SHA-256 (the audit's content digest) leaves out images the run
trained, validated or was tested on (run_folder.RUN_IMAGES) and exact copies within the pool before
any decoding; the readable rest are decoded by the one input reader, hashed perceptually (the
audit's phash) and scored by the run's model (PyTorch, or its exported graph with onnxruntime), a
batch at a time, so only probabilities, embeddings and hashes are held. Near copies within the pool
(data/duplicates.py's pairs and groups) keep the first of each group in path order. A strategy
(curation/strategies.py) then ranks the rest; to_label.csv and select.json are written.
"""

from __future__ import annotations

import csv
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from facemask.config.schema import ConfigError, DataConfig, WorkFailed
from facemask.data.storage import file_sha256
from facemask.curation.strategies import DEFAULT_STRATEGY, EMBEDDING_STRATEGIES, STRATEGIES, select
from facemask.run_folder import SELECT_DIR, SELECT_JSON, TO_LABEL_CSV, write_json
from facemask.runtime.model import EMBEDDING_OUTPUT

SHOWN_UNREADABLE = 20  # unreadable files named on stderr; select.json lists them all


def add_arguments(parser: Any) -> None:
    from facemask.runtime.model import add_backend_argument

    parser.add_argument("run", help="a training run's folder (it lists the images it trained and was tested on)")
    parser.add_argument("pool", help="a folder of unlabelled images, searched recursively")
    parser.add_argument("--budget", type=int, required=True, help="how many images to pick")
    parser.add_argument("--strategy", choices=list(STRATEGIES), default=DEFAULT_STRATEGY,
                        help=f"how to pick them (default {DEFAULT_STRATEGY}; docs/select.md)")
    parser.add_argument("--output", help=f"the output folder (default RUN/{SELECT_DIR.name[:-1]}STRATEGY-BUDGET)")
    parser.add_argument("--force", action="store_true", help=f"replace an existing {TO_LABEL_CSV} there")
    parser.add_argument("--seed", type=int, default=0, help="random's order and the clusters' k-means")
    parser.add_argument("--near-distance", type=int, default=DataConfig.near_duplicate_distance,
                        help="perceptual-hash bits (of 256) within which two pool images are near copies, as the "
                             "audit's data.near_duplicate_distance")
    parser.add_argument("--batch-size", type=int, default=32)
    add_backend_argument(parser)


@dataclass
class Pool:
    """What scoring a pool keeps: per kept image its path, digest, hash, probabilities, embedding."""
    files: List[str] = field(default_factory=list)
    digests: List[str] = field(default_factory=list)
    hashes: List[np.ndarray] = field(default_factory=list)
    probs: List[np.ndarray] = field(default_factory=list)
    embeddings: List[np.ndarray] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)
    scored: int = 0
    seconds: float = 0.0


class TorchScorer:
    """The PyTorch model: class probabilities as evaluation/predict.py computes them, and the input of
    its classifier head (the pooled feature: ViT's CLS token, BEiT's mean-pooled patches)."""

    def __init__(self, run: str, embeddings: bool) -> None:
        from facemask.evaluation.loading import load_model
        from facemask.evaluation.predict import class_labels
        from facemask.pipeline.processor import processor_image_size

        self.model, self.processor = load_model(run, backend="torch")
        self.model.eval()
        self.labels = class_labels(self.model)
        self.input_side = processor_image_size(self.processor)
        self.head = getattr(self.model, "classifier", None) if embeddings else None
        if embeddings and self.head is None:
            raise ConfigError(f"{run}: the model has no `classifier` head to take its embedding from; use --strategy "
                              "margin, entropy or random")

    def score(self, images: Sequence[Image.Image]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        from facemask.evaluation.predict import class_probabilities

        captured: List[Any] = []
        hook = self.head.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].detach())) \
            if self.head is not None else None
        try:
            probs = class_probabilities(self.model, self.processor, images, batch_size=len(images))
        finally:
            if hook is not None:
                hook.remove()
        embeddings = np.concatenate([c.float().cpu().numpy() for c in captured]) if captured else None
        return probs, embeddings


class OnnxScorer:
    """The exported graph on onnxruntime (no torch): probabilities by the runtime's softmax, and its
    `embedding` output where the export has one."""

    def __init__(self, run: str, backend: str, embeddings: bool) -> None:
        from facemask.runtime.model import load_onnx_model

        self.model = load_onnx_model(run, backend, spinning=False)  # the pool is decoded between runs
        self.labels = self.model.labels
        self.input_side = self.model.input_side
        outputs = [o.name for o in self.model.session.get_outputs()]
        if embeddings and EMBEDDING_OUTPUT not in outputs:
            raise ConfigError(f"{self.model.path} has no '{EMBEDDING_OUTPUT}' output (exported before select "
                              "needed it): export the run again (python -m facemask export RUN), or use --backend "
                              "torch, or an uncertainty strategy (--strategy margin or entropy)")
        self.outputs = ["logits", EMBEDDING_OUTPUT] if embeddings else ["logits"]

    def score(self, images: Sequence[Image.Image]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        from facemask.runtime.model import softmax

        pixels = np.ascontiguousarray(self.model.preprocessor(images), dtype=np.float32)
        found = self.model.session.run(self.outputs, {"pixel_values": pixels})
        return softmax(found[0].astype(np.float32)), (found[1].astype(np.float32) if len(found) > 1 else None)


def load_scorer(run: str, backend: str, embeddings: bool) -> Any:
    return TorchScorer(run, embeddings) if backend == "torch" else OnnxScorer(run, backend, embeddings)


def score_pool(scorer: Any, paths: Sequence[Path], seen: Dict[str, frozenset], batch_size: int) -> Pool:
    """Each file read for its digest (seen or copied files stop there), then decoded, hashed and
    scored a batch at a time."""
    import imagehash

    from facemask.data.inspection import HASH_SIZE
    from facemask.progress import progress
    from facemask.runtime.files import read_input

    pool = Pool()
    first_of: Dict[str, str] = {}
    batch: List[Image.Image] = []
    start = time.perf_counter()

    def flush() -> None:
        probs, embeddings = scorer.score(batch)
        pool.probs.append(probs)
        if embeddings is not None:
            pool.embeddings.append(embeddings)
        pool.scored += len(batch)
        batch.clear()

    bar = progress(total=len(paths), desc="scoring the pool", unit="image")
    try:
        for path in paths:
            bar.update(1)
            try:
                digest = file_sha256(path)
            except OSError as err:
                pool.unreadable.append((str(path), str(err).splitlines()[0]))
                continue
            split = next((name for name, digests in seen.items() if digest in digests), None)
            if split is not None:
                pool.skipped[f"in_{split}_data"] += 1
                continue
            if digest in first_of:
                pool.skipped["exact_copy"] += 1
                continue
            image, reason = read_input(path, 2 * scorer.input_side)
            if image is None:
                pool.unreadable.append((str(path), reason))
                continue
            first_of[digest] = str(path)
            pool.files.append(str(path.resolve()))
            pool.digests.append(digest)
            pool.hashes.append(imagehash.phash(image, hash_size=HASH_SIZE).hash.flatten())
            batch.append(image)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    finally:
        bar.close()
    pool.seconds = time.perf_counter() - start
    if pool.unreadable:
        pool.skipped["unreadable"] = len(pool.unreadable)
    return pool


def near_copies(hashes: List[np.ndarray], max_distance: int) -> np.ndarray:
    """The rows to keep: the first of each group of near copies (data/duplicates.py's groups)."""
    from facemask.data.duplicates import groups, near_pairs

    if len(hashes) < 2:
        return np.arange(len(hashes))
    i, j, _ = near_pairs(np.stack(hashes), max_distance)
    group = groups(len(hashes), list(zip(i.tolist(), j.tolist())))
    _, first = np.unique(group, return_index=True)
    return np.sort(first)


SKIP_REASONS = {"exact_copy": "exact copies of another pool image", "near_copy": "near copies of another pool image",
                "unreadable": "unreadable"}


def described(skipped: Counter) -> str:
    """select.json's skip counts in words: '3 in the run's train data, 1 unreadable'."""
    words = {**SKIP_REASONS, **{k: f"in the run's {k[3:-5]} data" for k in skipped if k.startswith("in_")}}
    return ", ".join(f"{n} {words.get(why, why)}" for why, n in skipped.items())


def output_folder(args: Any) -> Path:
    if args.output:
        return Path(args.output).expanduser()
    return Path(args.run).expanduser() / SELECT_DIR.name.replace("*", f"{args.strategy}-{args.budget}")


def check_arguments(args: Any) -> Tuple[Path, Path]:
    """(the pool, the output folder), or a ConfigError before any model is loaded."""
    if args.budget <= 0:
        raise ConfigError(f"--budget {args.budget}: the number of images to pick must be 1 or more")
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size {args.batch_size}: must be 1 or more")
    run = Path(args.run).expanduser()
    if not run.is_dir():
        raise ConfigError(f"run folder not found: {run}: point at a training run's output folder")
    pool = Path(args.pool).expanduser()
    if not pool.is_dir():
        raise ConfigError(f"pool folder not found: {pool}: point at a folder of unlabelled images")
    out = output_folder(args)
    if (out / TO_LABEL_CSV).exists() and not args.force:
        raise ConfigError(f"{out / TO_LABEL_CSV} exists: choose another --output, or --force to replace it")
    return pool, out


def rows(pool: Pool, kept: np.ndarray, picked: np.ndarray, scores: np.ndarray, labels: List[str]
         ) -> List[Dict[str, Any]]:
    probs = np.concatenate(pool.probs)
    out = []
    for rank, (row, score) in enumerate(zip(kept[picked].tolist(), scores.tolist()), 1):
        p = probs[row]
        best = int(p.argmax())
        out.append({"rank": rank, "file": pool.files[row], "sha256": pool.digests[row],
                    "score": "" if np.isnan(score) else round(float(score), 6), "suggested_label": labels[best],
                    "probability": round(float(p[best]), 6),
                    **{f"prob_{label}": round(float(v), 6) for label, v in zip(labels, p)}})
    return out


def write_table(path: Path, table: List[Dict[str, Any]], labels: List[str]) -> None:
    from facemask.data.storage import staged

    columns = ["rank", "file", "sha256", "score", "suggested_label", "probability", *(f"prob_{x}" for x in labels)]
    with staged(path) as partial, partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(table)


def command(args: Any) -> int:
    from facemask.data.seen import read_run_images
    from facemask.runtime.files import collect_paths

    pool_dir, out = check_arguments(args)
    seen = read_run_images(Path(args.run).expanduser())
    paths, _ = collect_paths([str(pool_dir)])
    if not paths:
        raise ConfigError(f"{pool_dir} holds no files: point at a folder of unlabelled images")
    embeddings = args.strategy in EMBEDDING_STRATEGIES
    scorer = load_scorer(args.run, args.backend, embeddings)
    pool = score_pool(scorer, paths, seen, args.batch_size)
    for path, reason in pool.unreadable[:SHOWN_UNREADABLE]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    if len(pool.unreadable) > SHOWN_UNREADABLE:
        print(f"... and {len(pool.unreadable) - SHOWN_UNREADABLE} more unreadable files (select.json lists them)",
              file=sys.stderr)
    kept = near_copies(pool.hashes, args.near_distance)
    if len(pool.files) - len(kept):
        pool.skipped["near_copy"] = len(pool.files) - len(kept)
    if not len(kept):
        raise WorkFailed(f"no image of {pool_dir} can be picked: of {len(paths)} files, "
                         + described(pool.skipped))
    probs = np.concatenate(pool.probs)[kept]
    vectors = np.concatenate(pool.embeddings)[kept] if embeddings else None
    picked, scores = select(args.strategy, probs, args.budget, vectors, args.seed)
    table = rows(pool, kept, picked, scores, scorer.labels)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / TO_LABEL_CSV, table, scorer.labels)
    summary = {"strategy": args.strategy, "budget": args.budget, "picked": len(table), "seed": args.seed,
               "run": str(Path(args.run).expanduser().resolve()), "pool": str(pool_dir.resolve()),
               "pool_files": len(paths), "candidates": int(len(kept)), "skipped": dict(pool.skipped),
               "near_distance": args.near_distance, "backend": args.backend, "batch_size": args.batch_size,
               "scored_images": pool.scored, "seconds": round(pool.seconds, 3),
               "images_per_s": round(pool.scored / pool.seconds, 2) if pool.seconds else None,
               "unreadable": [{"file": f, "reason": r} for f, r in pool.unreadable]}
    write_json(out / SELECT_JSON, summary)
    skipped = described(pool.skipped) or "none"
    print(f"picked {len(table)} of {len(kept)} candidate images ({len(paths)} files; skipped: {skipped}) by "
          f"{args.strategy}; scored {pool.scored} images in {pool.seconds:.1f} s ({summary['images_per_s']} images/s, "
          f"{args.backend}); wrote {out / TO_LABEL_CSV}")
    return 0
