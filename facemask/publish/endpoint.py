"""`python -m facemask push --handler`: a Hugging Face Inference Endpoints handler beside the run's
files, so that a deployed endpoint answers as `predict` does (endpoint_template/handler.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

from facemask import REPO
from facemask.run_folder import HANDLER, HANDLER_CONFIG, write_json

TEMPLATE = REPO / "endpoint_template" / HANDLER.name


def add_handler(run_dir: Path, threshold: Optional[str] = None, positive_label: Optional[str] = None) -> List[Path]:
    """handler.py and handler_config.json written into the run folder; returns them."""
    from transformers import AutoImageProcessor

    from facemask.data.labels import resolve_positive_label
    from facemask.pipeline.processor import BACKEND, processor_image_size
    from facemask.runtime.decision import decision_threshold
    from facemask.runtime.model import read_labels

    run_dir = Path(run_dir)
    labels = read_labels(run_dir)
    # predict's checks and rule (a number or an operating point; two labels), the one owner of them
    value = decision_threshold(run_dir, labels, threshold, positive_label)
    record = {"threshold": value, "positive_index": None if value is None else
              resolve_positive_label(labels, positive_label)}
    processor = AutoImageProcessor.from_pretrained(run_dir, backend=BACKEND)
    record["draft_side"] = 2 * processor_image_size(processor)  # as predict decodes JPEGs
    shutil.copyfile(TEMPLATE, HANDLER.path(run_dir))
    write_json(HANDLER_CONFIG.path(run_dir), record)
    return [HANDLER.path(run_dir), HANDLER_CONFIG.path(run_dir)]
