"""`load_config`: a YAML file plus dotted `section.key=value` overrides, checked and merged into
the typed config.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from facemask import CONFIGS
from facemask.config.overrides import let_overrides_pick_model, let_overrides_pick_source, parse_overrides
from facemask.config.schema import ConfigError, ExperimentConfig
from facemask.config.validation import check_keys, coerce_training_value, training_argument_types, validate


def config_path(path: str | Path) -> Path:
    """`path` when it is a file; else the config of that name the package carries (the configs the
    docs name: `configs/quickstart.yaml` or `quickstart.yaml` from any folder, with an installed
    package too). A file of the user's always wins over a bundled one of the same name."""
    path = Path(path)
    if path.is_file():
        return path
    parts = path.parts[1:] if len(path.parts) > 1 and path.parts[0] == CONFIGS.name else path.parts
    if parts and not path.is_absolute() and ".." not in parts and CONFIGS.joinpath(*parts).is_file():
        return CONFIGS.joinpath(*parts)
    names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file not found: {path} (nor is it a config the package carries: configs/NAME.yaml "
                      f"with NAME one of {names})")


def load_config(path: str | Path | None, overrides: List[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply `section.key=value` overrides, validate, return dataclasses."""
    layers = []
    if path is not None:
        path = config_path(path)
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        layers.append((str(path), raw))
    if overrides:
        layers.append(("command line", parse_overrides(overrides)))

    for origin, tree in layers:
        check_keys(tree, ExperimentConfig, "", origin)
    if len(layers) == 2:
        let_overrides_pick_source(layers[0][1], layers[1][1])
        let_overrides_pick_model(layers[0][1], layers[1][1])

    merged = OmegaConf.structured(ExperimentConfig)
    for origin, tree in layers:
        try:
            merged = OmegaConf.merge(merged, OmegaConf.create(tree))
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            message = str(getattr(err, "msg", err)).splitlines()[0]
            raise ConfigError(f"{origin}: bad value for '{key}': {message}") from None
    cfg: ExperimentConfig = OmegaConf.to_object(merged)

    types_ = training_argument_types()
    cfg.training = {k: coerce_training_value(k, v, types_[k]) for k, v in cfg.training.items()}
    validate(cfg)
    return cfg
