"""Provenance of a run: code version, data fingerprint, software versions (run_info.json)."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from transformers import TrainingArguments

from facemask import PACKAGE
from facemask.config.schema import ExperimentConfig
from facemask.data.sources import PreparedData
from facemask.run_folder import EXPERIMENT, PRETRAINING, RUN_INFO, read_json, write_json
from facemask.training.arguments import effective_batch_size

logger = logging.getLogger("facemask")


def git_state() -> Dict[str, Any]:
    """The code's commit and whether the working tree differed from it, when the package runs from
    a git checkout that tracks it; empty for an installed package (run_info's versions name it), even
    one installed inside some other checkout (a virtual environment in a repository)."""
    root = PACKAGE
    try:
        subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=root, capture_output=True,
                       timeout=10, check=True)
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
    where they came from (Hub id and revision, folders, or the generator), and with data.corrections
    the digest of its decisions (labels change what a run trains on, not its images)."""
    d = cfg.data
    per_split = {split: data.images_digest(split) for split in data.splits}
    combined = hashlib.sha256(json.dumps(per_split, sort_keys=True).encode()).hexdigest()
    record: Dict[str, Any] = {"images_sha256": combined, "images": sum(len(ds) for ds in data.splits.values())}
    if data.corrections is not None:
        # The same images with other labels are other data: the decisions' digest tells them apart.
        record["corrections_sha256"] = data.corrections["sha256"]
    if d.synthetic:
        return {**drawn_set(cfg), "seed": cfg.seed, "probe_sha256": drawn_probe(cfg, cfg.seed), **record}
    if d.dataset_name:
        return {"kind": "hub", "dataset": d.dataset_name, "config": d.dataset_config,
                "revision": d.dataset_revision or "main", **record}
    return {"kind": "folders", **record}


def drawn_set(cfg: ExperimentConfig) -> Dict[str, Any]:
    """A config's drawn set, known before any image is drawn: its parameters and the generator's
    code (each seed then draws its own images; `drawn_probe` tells them by content)."""
    from facemask.data import synthetic

    d = cfg.data
    styled = {} if d.synthetic_style == "studio" else {"style": d.synthetic_style}
    if d.synthetic_occluders:
        styled["occluders"] = d.synthetic_occluders
    return {"kind": "synthetic", "num_images": d.synthetic_num_images, "image_size": d.synthetic_image_size,
            **styled, "generator_sha256": synthetic.generator_digest()}


def drawn_probe(cfg: ExperimentConfig, seed: int) -> str:
    """The content of the drawn set a seed gives (its first images and labels, hashed): the same
    pixels whatever edits the generator's file has had since."""
    from facemask.data import synthetic

    return synthetic.probe_digest(seed, cfg.data.synthetic_image_size, cfg.data.synthetic_style,
                                  cfg.data.synthetic_occluders)


# Keys that name a run rather than change what it measures.
_NOT_RECIPE = {"output_dir", "seed", "logging_dir", "report_to", "disable_tqdm", "run_name"}


def recipe_of(experiment: Dict[str, Any]) -> Dict[str, Any]:
    """A resolved config (experiment.yaml as a dict) without what names the run: its folder, seed,
    logging and publishing. Two runs with the same recipe differ only by seed."""
    return {section: ({k: v for k, v in values.items() if k not in _NOT_RECIPE} if isinstance(values, dict) else values)
            for section, values in experiment.items() if section not in ("hub", "card")}


def base_model(cfg: ExperimentConfig) -> Dict[str, str]:
    """Where the weights started, decided while the source is at hand (a card may be regenerated where
    it is not): a Hub id, or a local checkpoint folder by its name alone (the Hub would read the
    name as a model id). Empty for a random init."""
    name = cfg.model.name_or_path
    if not name:
        return {}
    path = Path(name).expanduser()
    # A folder that exists is what from_pretrained loads, as model_folder decides for evaluation.
    record = {"local_folder": path.resolve().name} if path.exists() else {"hub_id": name}
    pretraining = pretraining_of(name, cfg.model.revision)
    if pretraining:
        # The card's Pretraining line: what the encoder learnt from, by name.
        record["pretraining"] = {k: pretraining.get(k) for k in ("objective", "mask_ratio", "data", "images",
                                                                 "started_from")}
    return record


def pretraining_of(name_or_path: str, revision: Optional[str] = None) -> Dict[str, Any]:
    """pretraining.json of a pretraining run (a local folder, or a Hub repository it was pushed to);
    empty for any other checkpoint, or where the Hub cannot be reached."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return read_json(PRETRAINING.path(path))
    try:
        from huggingface_hub import hf_hub_download

        return read_json(Path(hf_hub_download(name_or_path, PRETRAINING.name, revision=revision)))
    except Exception:  # not a pretraining run, offline, private: the card then has no Pretraining line
        return {}


def run_info(argv: List[str], data: PreparedData, args: TrainingArguments, cfg: ExperimentConfig,
             inspections: Optional[Dict[str, List[Any]]] = None) -> Dict[str, Any]:
    """What the card needs to say about a run and that its other files do not hold. Each split's
    `content_sha256` (data/inspection.py split_digest, from the audit's inspections) is what
    evaluate.py --config, compare and a distillation student hold a split to; absent with
    data.audit=false."""
    import platform
    from importlib.metadata import version

    from facemask import __version__
    from facemask.config.dump import redact
    from facemask.data.inspection import split_digest
    from facemask.data.sources import class_counts

    def split_record(split: str, ds: Any) -> Dict[str, Any]:
        record = {"num_images": len(ds), "class_counts": class_counts(ds, data.label_column, data.labels)}
        digest = split_digest((inspections or {}).get(split), ds[data.label_column], data.labels)
        return {**record, "content_sha256": digest} if digest else record

    return {
        "command": redact(" ".join(["python", "train.py", *map(shlex.quote, argv)])),
        "seed": args.seed,
        "world_size": args.world_size,
        "effective_batch_size": effective_batch_size(args),
        "git": git_state(),
        "data_fingerprint": data_fingerprint(cfg, data),
        "base_model": base_model(cfg),
        "data": {
            "source": data.source,
            "labels": data.labels,
            "splits": {split: split_record(split, ds) for split, ds in data.splits.items()},
            # Each split not drawn from the training source, by its own public name (the card's model-index).
            "split_sources": data.split_sources,
            # data.exclude: the list by its file name, the images it left out per split, and those it
            # names in the evaluation splits that stayed (data/exclude.py apply_exclusion).
            **({"exclude": data.exclusion} if data.exclusion is not None else {}),
            # data.corrections: the file by its name, the labels it changed and confirmed per split, the
            # images it added to train (data/corrections.py apply_corrections).
            **({"corrections": data.corrections} if data.corrections is not None else {}),
        },
        # Read from the installed distributions: importing a library only to ask its version is slow.
        "versions": {"Python": platform.python_version(),
                     **{name: version(dist) for name, dist in LIBRARIES.items()}, "facemask": __version__},
    }


# The card's "Framework versions": the libraries a run is made of, by their distribution names.
LIBRARIES = {"PyTorch": "torch", "Transformers": "transformers", "Datasets": "datasets", "Accelerate": "accelerate",
             "huggingface_hub": "huggingface_hub"}


def write_run_record(output_dir: Path, info: Dict[str, Any], resolved_config: str, resuming: bool) -> None:
    """experiment.yaml (the resolved config) and run_info.json, before training starts."""
    output_dir.mkdir(parents=True, exist_ok=True)
    experiment = EXPERIMENT.path(output_dir)
    if resuming and experiment.is_file() and experiment.read_text(encoding="utf-8") != resolved_config:
        logger.warning("resuming with a configuration that differs from the interrupted run's experiment.yaml")
    experiment.write_text(resolved_config, encoding="utf-8")
    write_json(RUN_INFO.path(output_dir), info)
