"""Pretrain a ViT/BEiT encoder by masked image modelling (SimMIM) on images without labels.

    python pretrain.py configs/pretrain-quickstart.yaml [section.key=value ...]
        [--resume [CHECKPOINT] | --overwrite] [--force]
    python -m facemask pretrain configs/pretrain-quickstart.yaml
    python train.py configs/quickstart.yaml model.name_or_path=outputs/pretrain-quickstart

The images come from the config's data section (class folders allowed, their labels unused). The
run folder is a backbone: `model.name_or_path=FOLDER` fine-tunes it with a fresh classification
head, and that run checks its test images against the images pretraining used (data.on_leak).
--resume, --overwrite, --force, SIGTERM and the run lock behave as in train.py.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any, Dict, List, Optional

from facemask.config.loading import load_config
from facemask.config.schema import ConfigError
from facemask.publish.card import write_card
from facemask.publish.hub import PushError, check_write_access, push_run
from facemask.training.arguments import logger
from facemask.training.masked_modeling import check_pretraining
from facemask.training.pretrain import pretrain
from facemask.training.resume import RunLock, parse_args, stop_on_sigterm
from facemask.training.setup import RunSetup
from facemask.training.trainer import CheckpointError


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Pretrain, save the encoder, its record, figures and card; returns pretraining.json's record."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, __doc__)
    cfg = load_config(args.config, args.overrides)
    check_pretraining(cfg)  # a model or masking that cannot pretrain fails before the folder is touched
    run = RunSetup.start(cfg)
    with stop_on_sigterm(), ExitStack() as held:
        if run.main_process:
            held.enter_context(RunLock(cfg.output_dir, force=args.force))
            if cfg.hub.push:
                logger.info("will push to %s as %s", cfg.hub.model_id, check_write_access("hub.push=true"))
        record = pretrain(run, args, argv, held)
        if run.main_process:
            logger.info("model card: %s", write_card(cfg.output_dir))
            if cfg.hub.push:
                logger.info("pushed to %s", push_run(cfg.output_dir, cfg.hub.model_id, cfg.hub.private,
                                                     cfg.hub.revision))
            logger.info("pretrained encoder in %s; fine-tune it with: python train.py CONFIG model.name_or_path=%s",
                        cfg.output_dir, cfg.output_dir)
        return record


def cli(argv: Optional[List[str]] = None) -> int:
    """As `python pretrain.py`: 0 done, 2 a config or input error (before any work), 1 a failure."""
    try:
        main(argv)
    except (ConfigError, PushError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
