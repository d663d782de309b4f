"""The typed experiment configuration: one dataclass per section of the YAML file.

`model`, `data`, `hub` and `card` are our own dataclasses, validated by OmegaConf. `training` is
passed through to `transformers.TrainingArguments`, so it is checked against that class's fields
and type hints instead of being mirrored here (it has ~150 fields and changes between releases).
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config (exit code 2)."""


class WorkFailed(RuntimeError):
    """Work that could not be done though it was asked for correctly (a push refused, an export
    whose parity fails, an output that cannot be written): exit code 1, the message says why."""


@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning with peft: the checkpoint stays frozen, low-rank adapters
    on `target_modules` and the classification head (in full) are trained; the run folder holds
    the merged model, and the adapter in adapter/."""

    method: str = "lora"
    r: int = 8
    alpha: float = 16.0  # LoRA's scale is alpha / r
    dropout: float = 0.0
    # Module names (suffixes) of the linear layers to adapt; default: the attention projections of
    # ViT and BEiT (transformers 5 names them q_proj, k_proj, v_proj, o_proj).
    target_modules: Optional[List[str]] = None


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
    # LoRA (peft): set to train adapters instead of every weight; null trains every weight.
    peft: Optional[PeftConfig] = None


@dataclass
class DataConfig:
    dataset_name: Optional[str] = None
    dataset_config: Optional[str] = None
    dataset_revision: Optional[str] = None
    train_dir: Optional[str] = None
    validation_dir: Optional[str] = None
    test_dir: Optional[str] = None
    # Test sets from other sources, evaluated at the end of training as split NAME (NAME_results.json,
    # ...): {NAME: an image folder, a dataset folder or a Hub dataset id, with @SPLIT to pick its split}.
    extra_test: Dict[str, str] = field(default_factory=dict)
    synthetic: bool = False
    synthetic_num_images: int = 2000
    synthetic_image_size: int = 96
    # "studio" portraits, or "street": the same kind of faces smaller, off-centre, tilted, in harsher
    # light and noisier (a shifted set: configs/quickstart-lora.yaml adapts a studio model to it).
    synthetic_style: str = "studio"
    # The share of drawn faces without a mask that get a hand, scarf or phone over the mouth and
    # nose (still labelled without a mask): teaches "something over the mouth is not a mask".
    synthetic_occluders: float = 0.0
    image_column: str = "image"
    label_column: str = "label"
    # Fractions of the training split held out, stratified, when the source lacks that split.
    validation_split: float = 0.15
    test_split: float = 0.0
    # K-fold cross-validation (set by `python -m facemask repeat --folds K`): validation is fold
    # cv_fold of cv_folds over the training data (after test is carved), duplicate groups on one side.
    cv_folds: Optional[int] = None
    cv_fold: Optional[int] = None
    # Expected number of classes; None means the face-mask default of two.
    num_labels: Optional[int] = None

    @property
    def expected_labels(self) -> int:
        """The number of classes the run must find: data.num_labels, or the face-mask two."""
        return self.num_labels or 2
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
    # A list of images to leave out of training (data/exclude.py: files or sha256: digests, matched
    # by content), dropped from train and validation after the held-out splits are carved.
    exclude: Optional[str] = None
    # Drop the listed images from the test split and the extra test sets too (a test figure on a
    # cleaned test set is another figure: the card says so); by default they stay and are reported.
    exclude_test: bool = False
    # A CSV of label decisions (data/corrections.py: file, sha256, given_label, label), matched by
    # content: training-side images relabelled, new images added to train after the carving.
    corrections: Optional[str] = None
    # Copies shared by splits the source provides: "drop" removes the training-side copy (and
    # validation's copy of a test image), "error" stops, "keep" trains on them (the card warns).
    on_leak: str = "drop"
    min_image_side: int = 8
    near_duplicate_distance: int = 12  # of 256 perceptual-hash bits
    shortcut_threshold: float = 0.75  # balanced accuracy of a one-attribute classifier
    # A partial shortcut: an attribute value held by >= shortcut_min_images images, >= shortcut_purity
    # of them in one class (see facemask/data/shortcuts.py for the whole rule).
    shortcut_min_images: int = 20
    shortcut_purity: float = 0.95
    # At the end of training, evaluate with each flagged attribute neutralised (shortcut reliance test).
    shortcut_test: bool = True
    # The error gallery's explanation maps (evaluation/explain.py): ablation, gradcam or none. Only
    # the gallery's 16 images get one; ablation costs a forward pass per patch each.
    error_maps: str = "ablation"
    max_class_ratio: float = 1.5
    # At the end of training, the test split (else validation) under corruptions at 5 severities and
    # the occlusion test (evaluation/robustness.py): about 37 more predictions of the split, so on
    # a seeded sample of at most robustness_max_images (null: all of them).
    robustness: bool = True
    robustness_max_images: Optional[int] = 500


@dataclass
class DistillConfig:
    """Knowledge distillation: the configured model (the student) learns from the teacher's
    softened probabilities as well as from the labels."""

    teacher: Optional[str] = None  # a run folder or a Hub id of a classifier with the same labels
    # loss = (1 - alpha) x cross-entropy(labels) + alpha x T^2 x KL(teacher_T || student_T)
    alpha: float = 0.5
    temperature: float = 2.0
    # Keep the teacher's logits of each training image: null caches when nothing varies the training
    # images (data.augment false, no photometric or mixing switch) and training runs on the CPU, true
    # insists, false never caches.
    cache_logits: Optional[bool] = None
    teacher_revision: Optional[str] = None


@dataclass
class RecipeConfig:
    """Training tricks, one switch each (facemask/recipe/build.py lists the module of each). Label
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
    # Camera corruptions as augmentation (kornia): each of Gaussian blur, motion blur, Gaussian
    # noise, JPEG and darkening (gamma) applied to an image with probability corruption_augment / 5,
    # so about that share of images meets at least one: the robustness test's corruptions, trained on.
    corruption_augment: float = 0.0
    # Distillation from a teacher: {teacher: RUN_OR_HUB_ID, alpha, temperature}; null trains on labels only.
    distill: Optional[DistillConfig] = None


@dataclass
class SearchConfig:
    """`python -m facemask search CONFIG --trials N`: each key of `space` is a config key (any
    training.*, recipe.*, model.config_overrides.*, model.from_config.* or model.peft.* (e.g. model.peft.r) field, or the
    augmentation's data.crop_scale/crop_ratio/hflip_prob) with a distribution:
    {log_uniform: [low, high]}, {uniform: [low, high]}, {int: [low, high]} or {choice: [a, b, ...]}."""

    space: Dict[str, Any] = field(default_factory=dict)
    # What to optimise: default eval_<training.metric_for_best_model>, in its direction.
    metric: Optional[str] = None
    direction: Optional[str] = None  # maximize or minimize
    pruner: str = "median"  # or "none": stop a trial whose evaluations trail the median of earlier ones
    seed: Optional[int] = None  # the sampler's; default the run's seed


@dataclass
class PretrainConfig:
    """`python -m facemask pretrain`: masked image modelling on the data section's images, labels
    ignored (docs/pretraining.md)."""
    # "simmim": SimMIM's masked pixel regression (L1 on the masked pixels), for ViT through
    # transformers' ViTForMaskedImageModeling and for BEiT through the same head on BeitModel
    # (BEiT's own head predicts visual tokens of a tokenizer this project cannot download).
    objective: str = "simmim"
    mask_ratio: float = 0.6  # the share of mask patches hidden from the encoder
    mask_patch_size: int = 32  # the side in pixels of one mask patch: a whole number of model patches
    reconstructions: int = 8  # images in the card's figure of masked inputs and reconstructions


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
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    card: CardConfig = field(default_factory=CardConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.training["output_dir"])

    @property
    def seed(self) -> int:
        return int(self.training.get("seed", 42))


def nearest(key: str, valid: typing.Iterable[str]) -> str:
    valid = sorted(valid)
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if match:
        return f"did you mean '{match[0]}'?"
    return "valid keys: " + ", ".join(valid)
