"""The resolved config as YAML (experiment.yaml) and the redaction of anything shaped like a
Hugging Face token: both are published, and a token never is.
"""

from __future__ import annotations

import dataclasses
import re

from omegaconf import OmegaConf

from facemask.config.schema import ExperimentConfig


def redact(text: str) -> str:
    """Mask anything shaped like a Hugging Face token."""
    return TOKEN_SHAPE.sub("hf_***", text)


SECRET_KEYS = {"hub_token"}
TOKEN_SHAPE = re.compile(r"hf_[A-Za-z0-9]{16,}")


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML that `load_config` reads back to an equal config.

    Secrets are left out: `hub_token`, and any value shaped like a Hugging Face token. This file is
    published, and a rerun takes the token from the environment. Other keys that merely mention
    tokens (average_tokens_across_devices, ...) are settings and stay.
    """
    training = {key: value for key, value in cfg.training.items()
                if key not in SECRET_KEYS and not (isinstance(value, str) and TOKEN_SHAPE.search(value))}
    cfg = dataclasses.replace(cfg, training=training)
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
