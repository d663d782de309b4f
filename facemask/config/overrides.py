"""Dotted `section.key=value` overrides from the command line, and how they combine with the file.
"""

from __future__ import annotations

from typing import Any, Dict, List

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facemask.config.schema import ConfigError


def parse_overrides(overrides: List[str]) -> Dict[str, Any]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {overrides}: {err}") from None


_SOURCE_KEYS = ("dataset_name", "train_dir", "synthetic")
_MODEL_KEYS = ("name_or_path", "from_config")


def let_overrides_pick_source(file_tree: Dict[str, Any], cli_tree: Dict[str, Any]) -> None:
    """A data source chosen on the command line replaces the file's, so `data.train_dir=DIR` alone
    retargets a config written for synthetic data (and vice versa) instead of clashing with it."""
    cli_data = cli_tree.get("data") or {}
    if not any(cli_data.get(key) for key in _SOURCE_KEYS):
        return
    file_data = file_tree.get("data") or {}
    for key in _SOURCE_KEYS:
        if key not in cli_data:
            file_data.pop(key, None)


def let_overrides_pick_model(file_tree: Dict[str, Any], cli_tree: Dict[str, Any]) -> None:
    """A checkpoint named on the command line replaces the file's random-init model (and a
    `model.from_config` given there the file's checkpoint), as a data source does: `python train.py
    configs/quickstart.yaml model.name_or_path=outputs/pretrain-quickstart` fine-tunes that run."""
    cli_model = cli_tree.get("model") or {}
    if not any(cli_model.get(key) for key in _MODEL_KEYS):
        return
    file_model = file_tree.get("model") or {}
    for key in _MODEL_KEYS:
        if key not in cli_model:
            file_model.pop(key, None)
