"""`python -m facemask push --handler`: a Hugging Face Inference Endpoints handler beside the run's
files, so that a deployed endpoint answers as `predict` does (facemask/templates/endpoint/handler.py)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import List, Optional

from facemask import TEMPLATES
from facemask.run_folder import HANDLER, HANDLER_CONFIG, write_json

TEMPLATE = TEMPLATES / "endpoint" / HANDLER.name


def add_handler(run_dir: Path, threshold: Optional[str] = None, positive_label: Optional[str] = None) -> List[Path]:
    """handler.py and handler_config.json written into the run folder; returns them."""
    from transformers import AutoImageProcessor

    from facemask.pipeline.processor import BACKEND, processor_image_size
    from facemask.runtime.decision import decision_rule
    from facemask.runtime.model import read_labels

    run_dir = Path(run_dir)
    labels = read_labels(run_dir)
    # predict's checks and rule (a number or an operating point on its table's class; two labels)
    rule = decision_rule(run_dir, labels, threshold, positive_label)
    record = {"threshold": rule.threshold}
    if rule.threshold is not None:  # the class by name too: the handler checks it against the model's labels
        record.update(positive_index=rule.positive, positive_label=rule.positive_label)
    processor = AutoImageProcessor.from_pretrained(run_dir, backend=BACKEND)
    record["draft_side"] = 2 * processor_image_size(processor)  # as predict decodes JPEGs
    shutil.copyfile(TEMPLATE, HANDLER.path(run_dir))
    write_json(HANDLER_CONFIG.path(run_dir), record)
    return [HANDLER.path(run_dir), HANDLER_CONFIG.path(run_dir)]
