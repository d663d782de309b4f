"""Fine-tune a ViT/BEiT face-mask classifier.

    python train.py configs/quickstart.yaml [section.key=value ...]
    accelerate launch train.py configs/vit-base-facemask.yaml
"""

from __future__ import annotations

import json
import sys
from typing import Dict, List, Optional

from transformers import set_seed

from facemask.config import ConfigError, load_config, to_yaml
from facemask.data import class_counts, load_data
from facemask.metrics import confusion
from facemask.modeling import build_model, load_image_processor
from facemask.training import attach_transforms, build_trainer, logger, parse_args, setup_logging, training_arguments

# Trainer's metric prefix for each split, as in transformers' example scripts.
PREFIXES = {"validation": "eval", "test": "test"}


def main(argv: Optional[List[str]] = None) -> Dict[str, Dict[str, float]]:
    """Train, evaluate on validation (and test), save model and results; returns the metrics."""
    args = parse_args(argv, __doc__)
    cfg = load_config(args.config, args.overrides)
    training_args = training_arguments(cfg)
    setup_logging(training_args)

    set_seed(training_args.seed)
    data = load_data(cfg.data, training_args.seed)
    if "validation" not in data.splits and training_args.eval_strategy != "no":
        raise ConfigError("there is no validation split: set data.validation_split > 0 or training.eval_strategy=no")
    for split, ds in data.splits.items():
        logger.info("%s: %d images %s", split, len(ds), class_counts(ds, data.label_column, data.labels))
    processor = load_image_processor(cfg.model)
    model = build_model(cfg.model, data.id2label, data.label2id)
    attach_transforms(data, processor, cfg)
    trainer = build_trainer(model, training_args, data, processor, cfg)

    if trainer.is_world_process_zero():
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        (cfg.output_dir / "experiment.yaml").write_text(to_yaml(cfg), encoding="utf-8")

    train_result = trainer.train()
    trainer.save_model()
    results = {"train": train_result.metrics}
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)

    for split, prefix in PREFIXES.items():
        if split not in data.splits:
            continue
        output = trainer.predict(data.splits[split], metric_key_prefix=prefix)
        metrics = output.metrics
        if prefix == "eval":
            # Records the final evaluation in the log history and adds the epoch, as evaluate() does.
            trainer.log(metrics)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
        if trainer.is_world_process_zero():
            matrix = confusion(output.label_ids, output.predictions, data.labels)
            path = cfg.output_dir / f"{prefix}_confusion_matrix.json"
            path.write_text(json.dumps(matrix, indent=2) + "\n", encoding="utf-8")
        results[prefix] = metrics
    trainer.save_state()
    return results


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        sys.exit(f"error: {err}")
