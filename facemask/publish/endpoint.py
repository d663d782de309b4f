"""`python -m facemask push --handler`: a Hugging Face Inference Endpoints handler beside the run's
files, so that a deployed endpoint answers as `predict` does (endpoint_template/handler.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

from facemask import REPO
from facemask.config.schema import ConfigError
from facemask.run_folder import CONFIG, HANDLER, HANDLER_CONFIG, read_json, write_json

TEMPLATE = REPO / "endpoint_template" / HANDLER.name


def add_handler(run_dir: Path, threshold: Optional[str] = None, positive_label: Optional[str] = None) -> List[Path]:
    """handler.py and handler_config.json written into the run folder; returns them."""
    from transformers import AutoImageProcessor

    from facemask.data.sources import resolve_positive_label
    from facemask.evaluation.analysis import threshold_from
    from facemask.pipeline.processor import BACKEND, processor_image_size

    run_dir = Path(run_dir)
    config = read_json(CONFIG.path(run_dir))
    if not config:
        raise ConfigError(f"{run_dir} holds no {CONFIG.name}: point --handler at a finished run's folder")
    labels = [config["id2label"][k] for k in sorted(config["id2label"], key=int)]
    record = {"threshold": None, "positive_index": None}
    if threshold is not None or positive_label is not None:
        try:
            if threshold is None:
                raise ValueError("--positive-label goes with --threshold")
            if len(labels) != 2:
                raise ValueError("--threshold needs a model with two labels")
            record = {"threshold": threshold_from(run_dir, threshold),
                      "positive_index": resolve_positive_label(labels, positive_label)}
        except ValueError as err:
            raise ConfigError(str(err)) from None
    processor = AutoImageProcessor.from_pretrained(run_dir, backend=BACKEND)
    record["draft_side"] = 2 * processor_image_size(processor)  # as predict decodes JPEGs
    shutil.copyfile(TEMPLATE, HANDLER.path(run_dir))
    write_json(HANDLER_CONFIG.path(run_dir), record)
    return [HANDLER.path(run_dir), HANDLER_CONFIG.path(run_dir)]
