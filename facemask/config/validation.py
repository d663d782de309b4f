"""What a config must satisfy: known keys (with the nearest one suggested), TrainingArguments
values of the right type, and the rules between fields.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib.util
import re
import types
import typing
from pathlib import Path
from typing import Any, Dict, Set

from facemask.config.schema import ConfigError, ExperimentConfig, nearest

# Split names a run gives its own splits and metric prefixes: an extra test set takes another.
RESERVED_SPLITS = {"train", "eval", "validation", "test", "all"}  # all: Trainer's all_results.json
# Keys that existed once, and what replaced them.
RENAMED = {"data.allow_leaks": "'data.allow_leaks' was replaced by 'data.on_leak' (drop, error or keep; "
                               "allow_leaks=true is on_leak=keep)"}


def check_keys(tree: Dict[str, Any], schema: type, prefix: str, origin: str) -> None:
    names = {f.name for f in dataclasses.fields(schema)}
    for key, value in tree.items():
        full = f"{prefix}{key}"
        if full in RENAMED:
            raise ConfigError(f"{origin}: {RENAMED[full]}")
        if key not in names:
            raise ConfigError(f"{origin}: unknown key '{full}'; {nearest(key, names)}")
        sub = _field_types(schema)[key]
        # An optional section (model.peft, recipe.distill): checked as its dataclass when given.
        if typing.get_origin(sub) in (typing.Union, types.UnionType):
            sub = next((a for a in typing.get_args(sub) if dataclasses.is_dataclass(a)), sub)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            check_keys(value, sub, f"{full}.", origin)
        elif key == "training" and prefix == "":
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{origin}: 'training' must be a mapping of TrainingArguments fields")
            for tkey in value or {}:
                if tkey not in training_argument_names():
                    raise ConfigError(
                        f"{origin}: unknown key 'training.{tkey}' (not a transformers.TrainingArguments "
                        f"field); {nearest(tkey, training_argument_names())}"
                    )


def _field_types(schema: type) -> Dict[str, Any]:
    return typing.get_type_hints(schema)


_TRAINING_TYPES: Dict[str, Any] = {}
_TRAINING_NAMES: Set[str] = set()


def training_argument_names() -> Set[str]:
    """TrainingArguments' init fields by name, read from transformers' source without importing it:
    the import brings torch (seconds), and a misspelled key must be reported before any of that
    (train.py and pretrain.py check the config first). The dataclass itself when the source cannot
    be read this way (tests/test_config.py checks that both agree)."""
    if not _TRAINING_NAMES:
        _TRAINING_NAMES.update(_fields_in_source() or training_argument_types())
    return _TRAINING_NAMES


def _fields_in_source() -> Set[str]:
    """The annotated class attributes of `TrainingArguments` in transformers/training_args.py, less
    ClassVars and `field(init=False)`; empty when that file or class is not found."""
    spec = importlib.util.find_spec("transformers")
    places = list(spec.submodule_search_locations or []) if spec else []
    source = next((Path(p) / "training_args.py" for p in places if (Path(p) / "training_args.py").is_file()), None)
    if source is None:
        return set()
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return set()
    found = next((node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments"),
                 None)
    names = set()
    for node in found.body if found else []:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(node.annotation):
            continue
        call = node.value
        if isinstance(call, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant) and
                                              k.value.value is False for k in call.keywords):
            continue
        names.add(node.target.id)
    return names


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


def coerce_training_value(key: str, value: Any, tp: Any) -> Any:
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


# TrainingArguments values with a valid range, checked before any data is read: transformers would
# find most of them only when it builds the optimizer or the DataLoader, after the audit and the
# caches (minutes on a real set), and say so as a traceback. key: (low, high, low_open, high_open, what)
TRAINING_RANGES = {
    "learning_rate": (0.0, None, False, False, "a learning rate >= 0"),
    "per_device_train_batch_size": (1, None, False, False, "a batch size of at least 1"),
    "per_device_eval_batch_size": (1, None, False, False, "a batch size of at least 1"),
    "gradient_accumulation_steps": (1, None, False, False, "at least 1 step"),
    "eval_accumulation_steps": (1, None, False, False, "at least 1 step"),
    "num_train_epochs": (0.0, None, True, False, "a number of epochs > 0"),
    "weight_decay": (0.0, None, False, False, "a weight decay >= 0"),
    "max_grad_norm": (0.0, None, False, False, "a norm >= 0 (0 turns clipping off)"),
    "adam_beta1": (0.0, 1.0, False, True, "a factor in [0, 1)"),
    "adam_beta2": (0.0, 1.0, False, True, "a factor in [0, 1)"),
    "adam_epsilon": (0.0, None, True, False, "a small number > 0"),
    "warmup_steps": (0.0, None, False, False, "a number of steps >= 0 (or a fraction of the run below 1)"),
    "label_smoothing_factor": (0.0, 1.0, False, True, "a fraction in [0, 1)"),
    "dataloader_num_workers": (0, None, False, False, "a number of worker processes >= 0"),
    "dataloader_prefetch_factor": (1, None, False, False, "at least 1 batch per worker"),
    "save_total_limit": (1, None, False, False, "at least 1 checkpoint kept (or leave it out: all kept)"),
    "seed": (0, 2**32 - 1, False, False, "a seed in [0, 2**32 - 1]"),
    "data_seed": (0, 2**32 - 1, False, False, "a seed in [0, 2**32 - 1]"),
    "logging_steps": (0.0, None, True, False, "a number of steps > 0 (or a fraction of the run below 1)"),
    "eval_steps": (0.0, None, True, False, "a number of steps > 0 (or a fraction of the run below 1)"),
    "save_steps": (0.0, None, True, False, "a number of steps > 0 (or a fraction of the run below 1)"),
}


def _validate_training(training: Dict[str, Any]) -> None:
    for key, (low, high, low_open, high_open, what) in TRAINING_RANGES.items():
        value = training.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # absent (TrainingArguments' default), or a type error reported by coerce_training_value
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise ConfigError(f"bad value for 'training.{key}': expected {what}, got {value!r}")
    max_steps = training.get("max_steps")
    if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
        raise ConfigError(f"bad value for 'training.max_steps': expected a number of steps > 0, or -1 for "
                          f"training.num_train_epochs to decide, got {max_steps}")


ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def validate(cfg: ExperimentConfig) -> None:
    if not cfg.training.get("output_dir"):
        raise ConfigError("'training.output_dir' is required: the folder the model and results go to")
    _validate_training(cfg.training)
    m = cfg.model
    if m.attn_implementation is not None and m.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"bad value for 'model.attn_implementation': {m.attn_implementation!r}; "
                          f"{nearest(m.attn_implementation, ATTENTION_IMPLEMENTATIONS)}")
    if (m.name_or_path is None) == (m.from_config is None):
        raise ConfigError("set exactly one of 'model.name_or_path' (a checkpoint) or 'model.from_config'")
    if m.from_config is not None and "model_type" not in m.from_config:
        raise ConfigError("'model.from_config' needs a 'model_type' key, e.g. vit or beit")
    _validate_pretrain(cfg)
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
    if (d.cv_folds is None) != (d.cv_fold is None):
        raise ConfigError("set 'data.cv_folds' and 'data.cv_fold' together (python -m facemask repeat --folds K does)")
    if d.cv_folds is not None and not (d.cv_folds >= 2 and 0 <= d.cv_fold < d.cv_folds):
        raise ConfigError(f"bad cross-validation fold: data.cv_fold={d.cv_fold} of data.cv_folds={d.cv_folds} "
                          "(folds >= 2, fold from 0 to folds - 1)")
    seen = set()
    for name, source in d.extra_test.items():
        # Compared in lower case: on a case-insensitive file system Test_results.json is test_results.json.
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name.lower() in RESERVED_SPLITS | seen:
            raise ConfigError(f"bad name 'data.extra_test.{name}': letters, digits or _ (it names files and metric "
                              f"keys), none of {', '.join(sorted(RESERVED_SPLITS))}, and each name once whatever "
                              "its case")
        seen.add(name.lower())
        if not source:
            raise ConfigError(f"'data.extra_test.{name}' is empty: give an image folder, a dataset folder or a Hub "
                              "dataset id")
    for key in ("crop_scale", "crop_ratio"):
        pair = getattr(d, key)
        if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
            raise ConfigError(f"bad value for 'data.{key}': expected [low, high] with 0 < low <= high, got {pair}")
    if not 0 <= d.synthetic_occluders <= 1:
        raise ConfigError(f"bad value for 'data.synthetic_occluders': a share between 0 and 1, got "
                          f"{d.synthetic_occluders}")
    if d.synthetic_style not in ("studio", "street", "mixed"):
        raise ConfigError(f"bad value for 'data.synthetic_style': expected 'studio', 'street' or 'mixed', got "
                          f"{d.synthetic_style!r}")
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
    if d.robustness_max_images is not None and d.robustness_max_images < 1:
        raise ConfigError(f"bad value for 'data.robustness_max_images': at least 1, or null for the whole split; got "
                          f"{d.robustness_max_images}")
    if d.error_maps not in ("ablation", "gradcam", "none"):
        raise ConfigError(f"bad value for 'data.error_maps': expected 'ablation', 'gradcam' or 'none', got "
                          f"{d.error_maps!r}")
    if d.exclude is not None and not d.audit:
        raise ConfigError("'data.exclude' needs the audit: images are matched to the list by the content digests it "
                          "takes; set data.audit=true (or remove data.exclude)")
    if d.corrections is not None and not d.audit:
        raise ConfigError("'data.corrections' needs the audit: images are matched to the file by the content digests "
                          "it takes; set data.audit=true (or remove data.corrections)")
    if d.exclude_test and d.exclude is None:
        raise ConfigError("'data.exclude_test' is true but 'data.exclude' names no list of images to leave out")
    if d.num_labels is not None and d.num_labels < 2:
        raise ConfigError(f"bad value for 'data.num_labels': expected at least 2, got {d.num_labels}")
    _validate_peft(cfg)
    _validate_recipe(cfg)
    _validate_distill(cfg)
    if cfg.hub.push and not cfg.hub.model_id:
        raise ConfigError("'hub.push' is true but 'hub.model_id' is not set (e.g. your-name/vit-facemask)")


def _validate_pretrain(cfg: ExperimentConfig) -> None:
    """The masking's own bounds; whether it fits the model's image and patches is checked where
    the model's config is known (training/masked_modeling.py), still before any work."""
    p = cfg.pretrain
    if p.objective != "simmim":
        raise ConfigError(f"bad value for 'pretrain.objective': {p.objective!r}; the one objective is 'simmim' "
                          "(masked pixel regression, for ViT and BEiT)")
    if not 0 < p.mask_ratio < 1:
        raise ConfigError(f"bad value for 'pretrain.mask_ratio': {p.mask_ratio}; expected a share of the mask "
                          "patches strictly between 0 and 1 (SimMIM uses 0.6)")
    if p.mask_patch_size < 1:
        raise ConfigError(f"bad value for 'pretrain.mask_patch_size': {p.mask_patch_size}; expected a side in "
                          "pixels, a whole number of the model's patches")
    if p.reconstructions < 0:
        raise ConfigError(f"bad value for 'pretrain.reconstructions': {p.reconstructions}; expected 0 or more")


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
    for key in ("mix_prob", "mix_switch_prob", "random_erasing", "corruption_augment"):
        if not 0.0 <= getattr(r, key) <= 1.0:
            raise ConfigError(f"bad value for 'recipe.{key}': expected a probability, got {getattr(r, key)}")


PEFT_METHODS = ("lora",)


def _validate_peft(cfg: ExperimentConfig) -> None:
    p = cfg.model.peft
    if p is None:
        return
    if p.method not in PEFT_METHODS:
        raise ConfigError(f"bad value for 'model.peft.method': {p.method!r}; {nearest(p.method, PEFT_METHODS)}")
    if cfg.model.from_config is not None:
        raise ConfigError("'model.peft' adapts a trained checkpoint, but 'model.from_config' builds a random-init "
                          "model whose frozen weights would stay random: set model.name_or_path to a checkpoint "
                          "(a Hub id or a run folder, e.g. outputs/quickstart), or remove model.peft")
    if cfg.recipe.ema_decay is not None:
        # An average of lora_A and one of lora_B apart is not an average of the model: the merged
        # weight would be W + avg(B) avg(A), which no step of training ever held.
        raise ConfigError("'recipe.ema_decay' with 'model.peft' is not supported: the adapter's two factors would "
                          "be averaged apart, and their product is not the average of the merged weights; remove "
                          "recipe.ema_decay (or model.peft)")
    if p.r < 1:
        raise ConfigError(f"bad value for 'model.peft.r': expected a rank of at least 1, got {p.r}")
    if p.alpha <= 0:
        raise ConfigError(f"bad value for 'model.peft.alpha': expected a positive scale, got {p.alpha}")
    if not 0.0 <= p.dropout < 1.0:
        raise ConfigError(f"bad value for 'model.peft.dropout': expected a probability in [0, 1), got {p.dropout}")
    if p.target_modules is not None and not p.target_modules:
        raise ConfigError("'model.peft.target_modules' is empty: name the linear layers to adapt, or leave it "
                          "out for the attention projections")


def augmented(cfg: ExperimentConfig) -> list:
    """The switches that make a training image differ from one epoch to the next."""
    d, r = cfg.data, cfg.recipe
    on = [("data.augment", d.augment), ("recipe.mixup_alpha", r.mixup_alpha > 0),
          ("recipe.cutmix_alpha", r.cutmix_alpha > 0), ("recipe.color_jitter", r.color_jitter > 0),
          ("recipe.rand_augment_n", r.rand_augment_n > 0), ("recipe.random_erasing", r.random_erasing > 0)]
    return [name for name, value in on if value]


def _validate_distill(cfg: ExperimentConfig) -> None:
    k = cfg.recipe.distill
    if k is None:
        return
    if not k.teacher:
        raise ConfigError("'recipe.distill.teacher' is required: a run folder or a Hub id of a classifier trained "
                          "on the same classes")
    if not 0.0 < k.alpha <= 1.0:
        raise ConfigError(f"bad value for 'recipe.distill.alpha': expected the teacher's share of the loss in "
                          f"(0, 1], got {k.alpha} (0 would be training without the teacher: remove recipe.distill)")
    if k.temperature <= 0:
        raise ConfigError(f"bad value for 'recipe.distill.temperature': expected a positive number, got "
                          f"{k.temperature}")
    varying = augmented(cfg)
    mixing = [name for name in varying if name in ("recipe.mixup_alpha", "recipe.cutmix_alpha")]
    if k.cache_logits and mixing:
        raise ConfigError(f"'recipe.distill.cache_logits: true' with {' and '.join(mixing)}: a mixed image has no "
                          "cached soft target (the teacher must see the mixed batch); set "
                          "recipe.distill.cache_logits=false or turn mixing off")
    if k.cache_logits and varying:
        raise ConfigError(f"'recipe.distill.cache_logits: true' but {', '.join(varying)} changes the training images "
                          "every epoch, so cached teacher logits would be of other pixels than the student sees: "
                          "set recipe.distill.cache_logits=false (or null), or turn those off")
