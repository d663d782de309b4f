"""Provenance of a run: code version, data fingerprint, software versions (run_info.json)."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from typing import Any, Dict, List

from transformers import TrainingArguments

from facemask import REPO
from facemask.config.schema import ExperimentConfig
from facemask.data.sources import PreparedData
from facemask.training.arguments import effective_batch_size


def git_state() -> Dict[str, Any]:
    """The code's commit and whether the working tree differed from it, if it is a git checkout."""
    root = REPO
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def data_fingerprint(cfg: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
    """One fingerprint of the images the run read, split by split: the same digest the
    preprocessing cache and the audit are keyed by (bytes, or path, size, mtime and ctime), plus
    where they came from (Hub id and revision, folders, or the generator)."""
    from facemask.data.storage import images_digest

    d = cfg.data
    per_split = {split: images_digest(ds, data.image_column) for split, ds in data.splits.items()}
    combined = hashlib.sha256(json.dumps(per_split, sort_keys=True).encode()).hexdigest()
    record: Dict[str, Any] = {"images_sha256": combined, "images": sum(len(ds) for ds in data.splits.values())}
    if d.synthetic:
        from facemask.data import synthetic

        return {"kind": "synthetic", "num_images": d.synthetic_num_images, "image_size": d.synthetic_image_size,
                "seed": cfg.seed, "generator_sha256": synthetic.generator_digest(), **record}
    if d.dataset_name:
        return {"kind": "hub", "dataset": d.dataset_name, "config": d.dataset_config,
                "revision": d.dataset_revision or "main", **record}
    return {"kind": "folders", **record}


def run_info(argv: List[str], data: PreparedData, args: TrainingArguments, cfg: ExperimentConfig) -> Dict[str, Any]:
    """What the card needs to say about a run and that its other files do not hold."""
    import platform

    import accelerate
    import datasets
    import huggingface_hub
    import torch
    import transformers

    from facemask import __version__
    from facemask.config.dump import redact
    from facemask.data.sources import class_counts
    from facemask.evaluation.metrics import evaluate

    return {
        "command": redact(" ".join(["python", "train.py", *map(shlex.quote, argv)])),
        "seed": args.seed,
        "world_size": args.world_size,
        "effective_batch_size": effective_batch_size(args),
        "git": git_state(),
        "data_fingerprint": data_fingerprint(cfg, data),
        "data": {
            "source": data.source,
            "labels": data.labels,
            "splits": {
                split: {"num_images": len(ds), "class_counts": class_counts(ds, data.label_column, data.labels)}
                for split, ds in data.splits.items()
            },
        },
        "versions": {
            "Python": platform.python_version(), "PyTorch": torch.__version__, "Transformers": transformers.__version__,
            "Datasets": datasets.__version__, "Evaluate": evaluate.__version__, "Accelerate": accelerate.__version__,
            "huggingface_hub": huggingface_hub.__version__, "facemask": __version__,
        },
    }
