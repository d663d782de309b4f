"""Typed experiment configuration: a YAML file plus dotted overrides, into dataclasses.

`model`, `data`, `hub` and `card` are our own dataclasses, validated by OmegaConf. `training` is
passed through to `transformers.TrainingArguments`, so it is checked against that class's fields
and type hints instead of being mirrored here (it has ~150 fields and changes between releases).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


@dataclass
class ModelConfig:
    # A Hub id or a local folder holding a checkpoint; its classification head is replaced.
    name_or_path: Optional[str] = None
    # Instead of a checkpoint: `model_type` plus config fields, for a random-init model.
    from_config: Optional[Dict[str, Any]] = None
    # Image-processor fields that override the checkpoint's (or, for from_config, the defaults).
    image_processor: Optional[Dict[str, Any]] = None
    revision: Optional[str] = None
    cache_dir: Optional[str] = None
    # Attention kernel: None (transformers' default: sdpa where the model has it), "sdpa", "eager",
    # "flash_attention_2"; one the machine or model cannot run falls back, with a warning.
    attn_implementation: Optional[str] = None
    # Model config fields set when the model is built, checked against its config class:
    # drop_path_rate, hidden_dropout_prob, attention_probs_dropout_prob, layer_scale_init_value, ...
    config_overrides: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset_name: Optional[str] = None
    dataset_config: Optional[str] = None
    dataset_revision: Optional[str] = None
    train_dir: Optional[str] = None
    validation_dir: Optional[str] = None
    test_dir: Optional[str] = None
    synthetic: bool = False
    synthetic_num_images: int = 2000
    synthetic_image_size: int = 96
    image_column: str = "image"
    label_column: str = "label"
    # Fractions of the training split held out, stratified, when the source lacks that split.
    validation_split: float = 0.15
    test_split: float = 0.0
    # Expected number of classes; None means the face-mask default of two.
    num_labels: Optional[int] = None
    # Class whose precision/recall/F1 are reported; None picks the "with mask" class.
    positive_label: Optional[str] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    augment: bool = True
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip_prob: float = 0.5
    cache_dir: Optional[str] = None
    # Input pipeline: "cache" decodes every image once into a uint8 cache and augments whole
    # batches; "per_image" opens, converts and resizes each image with PIL every epoch.
    preprocess: str = "cache"
    # Where caches live (default: <datasets cache>/facemask-preprocessed); reused across runs.
    preprocess_dir: Optional[str] = None
    preprocess_num_proc: Optional[int] = None  # default: all cores, for sets large enough
    preprocess_scale: float = 8 / 7  # training images are cached at this multiple of the model side
    # Data audit (python -m facemask audit; also before every training run).
    audit: bool = True
    on_bad_image: str = "error"  # or "skip": leave unreadable images out, counted
    # Copies shared by splits the source provides: "drop" removes the training-side copy (and
    # validation's copy of a test image), "error" stops, "keep" trains on them (the card warns).
    on_leak: str = "drop"
    min_image_side: int = 8
    near_duplicate_distance: int = 12  # of 256 perceptual-hash bits
    shortcut_threshold: float = 0.75  # balanced accuracy of a one-attribute classifier
    # A partial shortcut: an attribute value held by >= shortcut_min_images images, >= shortcut_purity
    # of them in one class (see facemask/shortcuts.py for the whole rule).
    shortcut_min_images: int = 20
    shortcut_purity: float = 0.95
    # At the end of training, evaluate with each flagged attribute neutralised (shortcut reliance test).
    shortcut_test: bool = True
    max_class_ratio: float = 1.5


@dataclass
class RecipeConfig:
    """Training tricks, one switch each (facemask/recipe.py lists the module of each). Label
    smoothing is `training.label_smoothing_factor`; weight decay is never applied to biases, norm
    weights, position embeddings, [CLS]/mask tokens, relative-position tables or layer scales."""

    # Stop when training.metric_for_best_model has not improved by more than the threshold for
    # this many evaluations (needs load_best_model_at_end).
    early_stopping_patience: Optional[int] = None
    early_stopping_threshold: float = 0.0
    # "balanced" (n_images / (n_classes x n_class), from the training split) or {class name: weight}.
    class_weights: Optional[Any] = None
    # Draw training samples with probability inversely proportional to their class's size.
    balanced_sampler: bool = False
    # Layer-wise learning-rate decay: the head gets the learning rate, block i of L gets
    # lr x decay^(L - i), the embeddings lr x decay^(L + 1).
    layer_decay: Optional[float] = None
    # Exponential moving average of the weights: evaluation, best-model choice and the saved model use it.
    ema_decay: Optional[float] = None
    ema_warmup: bool = True  # decay ramps as min(decay, (1 + updates) / (10 + updates))
    ema_every: int = 1  # optimizer steps between updates
    # Mixup / CutMix on the device batch, with soft targets; with both on, each batch is one or
    # the other (cutmix with mix_switch_prob); mix_prob of the batches are mixed at all.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    # Photometric augmentation of the device batch (kornia), after crop and flip: colour jitter
    # strength (brightness, contrast, saturation), RandAugment (n ops of magnitude m, 0-30), and
    # the probability of erasing a random box.
    color_jitter: float = 0.0
    rand_augment_n: int = 0
    rand_augment_m: int = 9
    random_erasing: float = 0.0


@dataclass
class SearchConfig:
    """`python -m facemask search CONFIG --trials N`: each key of `space` is a config key (any
    training.*, recipe.*, model.config_overrides.* or model.from_config.* field, or the
    augmentation's data.crop_scale/crop_ratio/hflip_prob) with a distribution:
    {log_uniform: [low, high]}, {uniform: [low, high]}, {int: [low, high]} or {choice: [a, b, ...]}."""

    space: Dict[str, Any] = field(default_factory=dict)
    # What to optimise: default eval_<training.metric_for_best_model>, in its direction.
    metric: Optional[str] = None
    direction: Optional[str] = None  # maximize or minimize
    pruner: str = "median"  # or "none": stop a trial whose evaluations trail the median of earlier ones
    seed: Optional[int] = None  # the sampler's; default the run's seed


@dataclass
class HubConfig:
    push: bool = False
    model_id: Optional[str] = None
    private: bool = True
    revision: Optional[str] = None


@dataclass
class CardConfig:
    license: str = "apache-2.0"
    model_name: Optional[str] = None
    language: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: Dict[str, Any] = field(default_factory=dict)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    card: CardConfig = field(default_factory=CardConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    @property
    def seed(self) -> int:
        return int(self.training.get("seed", 42))


def _nearest(key: str, valid: typing.Iterable[str]) -> str:
    valid = sorted(valid)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return f"did you mean '{match[0]}'?"
    return "valid keys: " + ", ".join(valid)


# Keys that existed once, and what replaced them.
RENAMED = {"data.allow_leaks": "'data.allow_leaks' was replaced by 'data.on_leak' (drop, error or keep; "
                               "allow_leaks=true is on_leak=keep)"}


def _check_keys(tree: Dict[str, Any], schema: type, prefix: str, origin: str) -> None:
    names = {f.name for f in dataclasses.fields(schema)}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if full in RENAMED:
            raise ConfigError(f"{origin}: {RENAMED[full]}")
        if key not in names:
            raise ConfigError(f"{origin}: unknown key '{full}'; {_nearest(key, names)}")
        sub = _field_types(schema)[key]
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            _check_keys(value, sub, f"{full}.", origin)
        elif key == "training" and prefix == "":
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{origin}: 'training' must be a mapping of TrainingArguments fields")
            for tkey in value or {}:
                if tkey not in training_argument_types():
                    raise ConfigError(
                        f"{origin}: unknown key 'training.{tkey}' (not a transformers.TrainingArguments "
                        f"field); {_nearest(tkey, training_argument_types())}"
                    )


def _field_types(schema: type) -> Dict[str, Any]:
    return typing.get_type_hints(schema)


_TRAINING_TYPES: Dict[str, Any] = {}


def training_argument_types() -> Dict[str, Any]:
    """TrainingArguments' init fields and their type hints (cached: the import is slow)."""
    if not _TRAINING_TYPES:
        from transformers import TrainingArguments

        hints = typing.get_type_hints(TrainingArguments)
        for f in dataclasses.fields(TrainingArguments):
            if f.init:
                _TRAINING_TYPES[f.name] = hints.get(f.name, Any)
    return _TRAINING_TYPES


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "one of " + ", ".join(repr(m.value) for m in tp)
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce_training_value(key: str, value: Any, tp: Any) -> Any:
    """Check (and where lossless, convert) one TrainingArguments value against its type hint."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    options = typing.get_args(tp) if origin in (typing.Union, types.UnionType) else (tp,)
    if value is None and type(None) in options:
        return None
    # Strategy fields are typed `SomeEnum | str`: the string branch would accept a typo, so an
    # enum in the union decides on its own.
    enums = [o for o in options if isinstance(o, type) and issubclass(o, enum.Enum)]
    if enums and value is False and any("no" in {m.value for m in e} for e in enums):
        # YAML 1.1 reads a bare `no` as false: `eval_strategy: no` means the strategy "no".
        return "no"
    if enums and isinstance(value, str):
        if any(value in {m.value for m in e} for e in enums):
            return value
        raise ConfigError(f"bad value for 'training.{key}': expected {_type_name(enums[0])}, got {value!r}")
    for option in options:
        base = typing.get_origin(option) or option
        if base is bool and isinstance(value, bool):
            return value
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is str and isinstance(value, str):
            return value
        if base in (list, tuple) and isinstance(value, (list, tuple)):
            return list(value)
        if base is dict and isinstance(value, dict):
            return value
    expected = " or ".join(_type_name(o) for o in options if o is not type(None))
    raise ConfigError(f"bad value for 'training.{key}': expected {expected}, got {value!r}")


def _parse_overrides(overrides: List[str]) -> Dict[str, Any]:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot parse overrides {overrides}: {err}") from None


_SOURCE_KEYS = ("dataset_name", "train_dir", "synthetic")


def _let_overrides_pick_source(file_tree: Dict[str, Any], cli_tree: Dict[str, Any]) -> None:
    """A data source chosen on the command line replaces the file's, so `data.train_dir=DIR` alone
    retargets a config written for synthetic data (and vice versa) instead of clashing with it."""
    cli_data = cli_tree.get("data") or {}
    if not any(cli_data.get(key) for key in _SOURCE_KEYS):
        return
    file_data = file_tree.get("data") or {}
    for key in _SOURCE_KEYS:
        if key not in cli_data:
            file_data.pop(key, None)


def load_config(path: str | Path | None, overrides: List[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply `section.key=value` overrides, validate, return dataclasses."""
    layers = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
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
        layers.append(("command line", _parse_overrides(overrides)))

    for origin, tree in layers:
        _check_keys(tree, ExperimentConfig, "", origin)
    if len(layers) == 2:
        _let_overrides_pick_source(layers[0][1], layers[1][1])

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
    cfg.training = {k: _coerce_training_value(k, v, types_[k]) for k, v in cfg.training.items()}
    _validate(cfg)
    return cfg


ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def _validate(cfg: ExperimentConfig) -> None:
    if not cfg.training.get("output_dir"):
        raise ConfigError("'training.output_dir' is required: the folder the model and results go to")
    m = cfg.model
    if m.attn_implementation is not None and m.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"bad value for 'model.attn_implementation': {m.attn_implementation!r}; "
                          f"{_nearest(m.attn_implementation, ATTENTION_IMPLEMENTATIONS)}")
    if (m.name_or_path is None) == (m.from_config is None):
        raise ConfigError("set exactly one of 'model.name_or_path' (a checkpoint) or 'model.from_config'")
    if m.from_config is not None and "model_type" not in m.from_config:
        raise ConfigError("'model.from_config' needs a 'model_type' key, e.g. vit or beit")
    d = cfg.data
    sources = [
        name
        for name, on in (
            ("data.dataset_name", d.dataset_name is not None),
            ("data.train_dir", d.train_dir is not None),
            ("data.synthetic", d.synthetic),
        )
        if on
    ]
    if len(sources) != 1:
        found = ", ".join(sources) if sources else "none"
        raise ConfigError(
            "set exactly one data source: data.dataset_name, data.train_dir or data.synthetic=true "
            f"(found: {found})"
        )
    for key in ("validation_split", "test_split"):
        value = getattr(d, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"bad value for 'data.{key}': expected a fraction in [0, 1), got {value}")
    if d.validation_split + d.test_split >= 1.0:
        raise ConfigError("'data.validation_split' + 'data.test_split' must leave some training data")
    for key in ("crop_scale", "crop_ratio"):
        pair = getattr(d, key)
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise ConfigError(f"bad value for 'data.{key}': expected [low, high] with 0 < low <= high, got {pair}")
    if d.preprocess not in ("cache", "per_image"):
        raise ConfigError(f"bad value for 'data.preprocess': expected 'cache' or 'per_image', got {d.preprocess!r}")
    if d.preprocess_scale < 1.0:
        raise ConfigError(f"bad value for 'data.preprocess_scale': expected at least 1.0, got {d.preprocess_scale}")
    if d.preprocess_num_proc is not None and d.preprocess_num_proc < 1:
        raise ConfigError(f"bad value for 'data.preprocess_num_proc': expected at least 1, got {d.preprocess_num_proc}")
    if d.on_leak not in ("drop", "error", "keep"):
        raise ConfigError(f"bad value for 'data.on_leak': expected 'drop', 'error' or 'keep', got {d.on_leak!r}")
    if not 0.5 < d.shortcut_purity <= 1.0:
        raise ConfigError(f"bad value for 'data.shortcut_purity': expected a fraction in (0.5, 1], got {d.shortcut_purity}")
    if d.on_bad_image not in ("error", "skip"):
        raise ConfigError(f"bad value for 'data.on_bad_image': expected 'error' or 'skip', got {d.on_bad_image!r}")
    if d.on_bad_image == "skip" and not d.audit:
        raise ConfigError("'data.on_bad_image: skip' needs the audit to find the bad images: set data.audit=true")
    if d.num_labels is not None and d.num_labels < 2:
        raise ConfigError(f"bad value for 'data.num_labels': expected at least 2, got {d.num_labels}")
    _validate_recipe(cfg)
    if cfg.hub.push and not cfg.hub.model_id:
        raise ConfigError("'hub.push' is true but 'hub.model_id' is not set (e.g. your-name/vit-facemask)")


def _validate_recipe(cfg: ExperimentConfig) -> None:
    r, t = cfg.recipe, cfg.training
    if r.early_stopping_patience is not None:
        if r.early_stopping_patience < 1:
            raise ConfigError(f"bad value for 'recipe.early_stopping_patience': expected at least 1, "
                              f"got {r.early_stopping_patience}")
        if not t.get("load_best_model_at_end") or t.get("eval_strategy", "no") in ("no", False):
            raise ConfigError("'recipe.early_stopping_patience' needs evaluations to judge by: set "
                              "training.eval_strategy (epoch or steps), training.load_best_model_at_end=true "
                              "and training.metric_for_best_model")
    if r.class_weights is not None and r.class_weights != "balanced" and not isinstance(r.class_weights, dict):
        raise ConfigError(f"bad value for 'recipe.class_weights': expected 'balanced' or a mapping "
                          f"{{class name: weight}}, got {r.class_weights!r}")
    if isinstance(r.class_weights, dict):
        for name, weight in r.class_weights.items():
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
                raise ConfigError(f"bad value for 'recipe.class_weights.{name}': expected a positive number, "
                                  f"got {weight!r}")
    if r.class_weights is not None and r.balanced_sampler:
        raise ConfigError("'recipe.class_weights' and 'recipe.balanced_sampler' both correct for class imbalance; "
                          "together they over-correct: choose one")
    if r.layer_decay is not None and not 0.0 < r.layer_decay <= 1.0:
        raise ConfigError(f"bad value for 'recipe.layer_decay': expected a factor in (0, 1], got {r.layer_decay}")
    if r.ema_decay is not None and not 0.0 < r.ema_decay < 1.0:
        raise ConfigError(f"bad value for 'recipe.ema_decay': expected a factor in (0, 1), got {r.ema_decay}")
    if r.ema_every < 1:
        raise ConfigError(f"bad value for 'recipe.ema_every': expected at least 1, got {r.ema_every}")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(r, key) < 0:
            raise ConfigError(f"bad value for 'recipe.{key}': expected 0 (off) or a positive alpha, got {getattr(r, key)}")
    if r.color_jitter < 0 or r.rand_augment_n < 0 or not 0 <= r.rand_augment_m <= 30:
        raise ConfigError("bad value in 'recipe': color_jitter and rand_augment_n must be >= 0 and "
                          "rand_augment_m in [0, 30]")
    for key in ("mix_prob", "mix_switch_prob", "random_erasing"):
        if not 0.0 <= getattr(r, key) <= 1.0:
            raise ConfigError(f"bad value for 'recipe.{key}': expected a probability, got {getattr(r, key)}")


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
