"""The run folder: the name of every file a run or an evaluation writes, and its reader.

Writers (train.py, evaluate.py, the audit, the card, export) take their file names from here;
so do the readers (card, demo, Space), the push (what is published, and which remote files a push
owns), evaluate.py's `--update-card` copy, `--overwrite`'s test of "is this a run folder", and
docs/outputs.md, whose table `outputs_table()` renders (a test holds the two together).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from facemask.config.schema import ConfigError

PREFIX = "<prefix>"  # a split's metric prefix in a per-split name: eval, test, or evaluate.py's --split


@dataclass(frozen=True)
class Output:
    name: str  # the file's name in the run folder; PREFIX stands for a split's prefix, * for any text
    writer: str
    content: str
    pushed: bool  # published by `push` (and owned there: a push deletes its earlier copy it no longer has)
    per_split: bool = False

    @property
    def pattern(self) -> str:
        return self.name.replace(PREFIX, "*")

    def path(self, directory: Path, prefix: Optional[str] = None) -> Path:
        return Path(directory) / (self.name.replace(PREFIX, prefix) if self.per_split else self.name)


def _split(suffix: str, content: str, pushed: bool = True, writer: str = "train.py, evaluate.py") -> Output:
    return Output(f"{PREFIX}_{suffix}", writer, content, pushed, per_split=True)


# The model, as transformers writes it (Trainer.save_model).
CONFIG = Output("config.json", "Trainer.save_model", "the model's config, with the class names (id2label)", True)
WEIGHTS = Output("model.safetensors", "Trainer.save_model", "the weights (the EMA's, when recipe.ema_decay is on)",
                 True)
SHARDS = Output("model-*-of-*.safetensors", "Trainer.save_model", "the weights in shards (large models)", True)
SHARD_INDEX = Output("model.safetensors.index.json", "Trainer.save_model", "which shard holds which weight", True)
PROCESSOR = Output("preprocessor_config.json", "Trainer.save_model", "the image processor (resize, normalise)", True)
TRAINING_ARGS = Output("training_args.bin", "Trainer.save_model",
                       "the TrainingArguments, pickled; never pushed (it can hold a hub_token)", False)
# model.peft: the adapter the merged weights above came from, in its own folder (a top-level
# adapter_config.json would make transformers apply it again on top of the merged weights).
ADAPTER_DIR = "adapter"
ADAPTER = Output(f"{ADAPTER_DIR}/*", "train.py (model.peft)", "the LoRA adapter and trained head (peft's adapter_config.json, "
                 "adapter_model.safetensors); the top-level weights already include it", True)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# recipe.distill: who taught the model, and the teacher's metrics on the run's own splits.
TEACHER = Output("teacher.json", "train.py (recipe.distill)", "the distillation teacher (Hub id or run-folder name), "
                 "alpha, temperature, and the teacher's metrics on the run's validation and test splits, as used in "
                 "training (the student's input resized) and at its own resolution", True)
# The run.
EXPERIMENT = Output("experiment.yaml", "train.py", "the resolved config: `python train.py experiment.yaml` reruns it "
                    "(secrets left out)", True)
RUN_INFO = Output("run_info.json", "train.py", "command, git state, data fingerprint, versions, class counts, "
                  "a digest of each split's images (what `evaluate.py --config` and a distillation student check "
                  "against), each split's source where it is not the training data's (by name), the base model "
                  "(a Hub id or a local folder's name), the images data.exclude left out (the list's file name, per "
                  "split, and those it names in the test sets), the switches asked for and used, the preprocessing "
                  "caches", True)
TRAIN_LOG = Output("train_log.jsonl", "train.py", "every log entry of the Trainer, one JSON object a line", False)
TRAIN_TEXT_LOG = Output("train.log", "train.py", "the run's full log: its own messages and every library's, warnings "
                        "included (the console shows the run's own)", False)
STATE = Output("trainer_state.json", "Trainer.save_state", "log history, best checkpoint, global step", True)
ALL_RESULTS = Output("all_results.json", "Trainer.save_metrics", "every split's metrics in one file", True)
LOCK = Output("run.lock", "train.py", "held while a run writes into the folder: host, PID, start time, its heartbeat "
              "(the file's mtime, refreshed every 10 s; removed at its end)", False)
CHECKPOINTS = Output("checkpoint-*", "Trainer (training.save_strategy)", "checkpoints for `--resume` (folders; "
                     "with recipe.ema_decay each holds the average as ema.safetensors)", False)
TRACKER_LOGS = Output("runs", "training.report_to: tensorboard", "TensorBoard event files (a folder)", False)
AUDIT_JSON = Output("data_audit.json", "the data audit", "the audit: bad files, copies and leaks, shortcuts, balance",
                    True)
AUDIT_MD = Output("data_audit.md", "the data audit", "the audit's summary, as the card shows it", True)
OPERATING_POINTS = Output("operating_points.json", "train.py", "thresholds on the probability of the class it "
                          "names (positive_label: data.positive_label) chosen on validation, with their validation "
                          "and test metrics", True)
# One of each per evaluated split (train.py: eval and test; evaluate.py: its --split).
RESULTS = _split("results.json", "the split's metrics (`train_results.json`: the training's)",
                 writer="train.py, evaluate.py (Trainer.save_metrics)")
PREDICTIONS = _split("predictions.csv", "every image: file, content SHA-256 (empty with data.audit false), true "
                     "label, predicted label, each class's probability",
                     pushed=False)
CONFUSION = _split("confusion_matrix.json", "the confusion matrix")
CONFUSION_FIGURE = _split("confusion_matrix.png", "the confusion matrix, drawn", writer="train.py, evaluate.py, card")
REPORT = _split("classification_report.json", "scikit-learn's per-class precision, recall, F1 and support",
                pushed=False)
ROC_FIGURE = _split("roc_curve.png", "the ROC curve of the positive class")
SLICES = _split("slices.json", "accuracy and recall per file format, colour mode, size, aspect and sharpness")
CALIBRATION = _split("calibration.json", "expected calibration error and the reliability diagram's bins")
INTERVALS = _split("intervals.json", "each headline metric with its 95% interval (Wilson for accuracy, precision, "
                   "recall; a stratified bootstrap for balanced accuracy, F1, ROC-AUC, calibration error), the "
                   "split's source (a folder's or dataset's name) and the digest of its images (`compare` pairs "
                   "runs by it)")
CALIBRATION_FIGURE = _split("calibration.png", "the reliability diagram")
ERRORS = _split("errors.json", "the misclassified images with the highest loss")
ERRORS_FIGURE = _split("errors.png", "those images, as a gallery (absent when nothing is misclassified)")
SHORTCUT_TEST = _split("shortcut_test.json", "accuracy with each flagged shortcut attribute neutralised",
                       writer="train.py (test, else eval), evaluate.py --shortcut-test")
ROBUSTNESS = _split("robustness.json", "accuracy under each corruption at 5 severities (Wilson intervals) beside "
                    "the clean accuracy of the same images, and the occlusion test: the share of no-mask images "
                    "read as masked with a hand, scarf or phone over the mouth",
                    writer="train.py (test, else eval; data.robustness), evaluate.py --robustness")
ROBUSTNESS_FIGURE = _split("robustness.png", "accuracy against severity, a line per corruption, the clean level",
                           writer="train.py, evaluate.py --robustness")
OCCLUSION_FIGURE = _split("occlusion.png", "the occluded no-mask images read as masked, with their maps (absent "
                          "when none flipped)", writer="train.py, evaluate.py --robustness")
# The card and what it shows.
CARD = Output("README.md", "train.py, `python -m facemask card`", "the model card", True)
CURVES_FIGURE = Output("training_curves.png", "card", "loss and evaluation metrics over training", True)
# python -m facemask pretrain: its run folder is a backbone `from_pretrained` loads (CONFIG, WEIGHTS,
# PROCESSOR above, the masked-image-modelling head included), with these and its own card.
PRETRAINING = Output("pretraining.json", "`python -m facemask pretrain`", "the pretraining: objective, masking, the "
                     "model it started from, the data (by name) and image count, final losses, time; it marks the "
                     "folder as a pretraining run", True)
PRETRAINING_IMAGES = Output("pretraining_images.txt", "`python -m facemask pretrain`", "the content SHA-256 of every "
                            "image pretraining used, one a line: a run fine-tuned from it checks its test images "
                            "against them (data.on_leak)", True)
PRETRAINING_LOSS_FIGURE = Output("pretraining_loss.png", "`python -m facemask pretrain`",
                                 "the reconstruction loss over training", True)
RECONSTRUCTIONS_FIGURE = Output("reconstructions.png", "`python -m facemask pretrain`",
                                "held-out images, masked, and the model's reconstructions", True)
RUN_IMAGES = Output("run_images.csv", "train.py", "split, content SHA-256 of every image each split holds (the audit's "
                    "digest; absent with data.audit false): `select` leaves them out of a pool", False)
# python -m facemask select: its own folder (default RUN/select-<strategy>-<budget>, or --output),
# inside the run folder by default.
SELECT_DIR = Output("select-*", "`python -m facemask select`", "the images to label next (to_label.csv) and how they "
                    "were picked (select.json), a folder per strategy and budget", False)
TO_LABEL_CSV, SELECT_JSON = "to_label.csv", "select.json"
# python -m facemask export.
ONNX_DIR = "onnx"
ONNX_GRAPH = Output("onnx/model.onnx", "`python -m facemask export`", "the model as an ONNX graph (fp32)", True)
ONNX_INT8 = Output("onnx/model_quantized.onnx", "`python -m facemask export --quantize int8`",
                   "dynamic int8 graph, kept only within --max-accuracy-drop", True)
PARITY = Output("onnx/parity.json", "`python -m facemask export`",
                "parity of the graphs with PyTorch on the validation images, accuracy, speed", True)
# python -m facemask push --handler: a Hugging Face Inference Endpoints handler for the run.
HANDLER = Output("handler.py", "`python -m facemask push --handler`", "an Inference Endpoints `EndpointHandler` "
                 "serving the run with predict's image handling and decision rule (a copy of "
                 "facemask/templates/endpoint/handler.py)", True)
HANDLER_CONFIG = Output("handler_config.json", "`python -m facemask push --handler`", "the handler's decision rule "
                        "(threshold and the class it is on, or the arg-max) and JPEG draft side", True)
# python -m facemask space.
SPACE_DIR = Output("space", "`python -m facemask space`", "the Space's files as pushed (a folder)", False)

# python -m facemask search: its own folder (default OUTPUT_DIR-search), not a run folder.
SEARCH_TRIALS_CSV, SEARCH_TRIALS_MD = "search_trials.csv", "search_trials.md"
SEARCH_BEST_CONFIG, SEARCH_STUDY = "best_config.yaml", "search.db"
SEARCH_FILES = (SEARCH_STUDY, SEARCH_TRIALS_CSV, SEARCH_TRIALS_MD, SEARCH_BEST_CONFIG)
# python -m facemask audit: AUDIT_JSON and AUDIT_MD in its own folder (default OUTPUT_DIR-audit, or
# --output), never in a run folder: the run's own audit is of the data it trained on.
AUDIT_SUFFIX = "-audit"
# `python -m facemask repeat`: in OUTPUT_DIR, above the runs' own folders (seed-N/, fold-N/), with
# a summary card (README.md, the CARD name).
REPEAT_RESULTS_CSV, REPEAT_RESULTS_JSON = "repeat_results.csv", "repeat_results.json"
# `python -m facemask label-issues`: in OUTPUT_DIR, beside its fold models (fold-N/) and the repeat's
# files of those folds. The figure is absent when no label is flagged.
LABEL_ISSUES_CSV, LABEL_ISSUES_JSON, LABEL_ISSUES_FIGURE = "label_issues.csv", "label_issues.json", "label_issues.png"
EXCLUDE_LIST = "exclude.txt"  # the flagged images, the list data.exclude reads
# `python -m facemask review DIR`: in DIR (a label-issues or select output folder). The journal is
# appended to, one line per decision, and never rewritten; the other files are made from it after
# every decision (a reader never sees half a file). The reviewed exclude list has a name of its own:
# label-issues' exclude.txt in the same folder is the blind list of every flag, the review's is what
# a person excluded.
REVIEW_JOURNAL, CORRECTIONS_CSV, REVIEW_EXCLUDE_LIST = "review.jsonl", "corrections.csv", "review_exclude.txt"
# review --export: Label Studio tasks with the model's predictions and their labelling config; a
# datasets imagefolder (links to the reviewed images and metadata.csv).
LABEL_STUDIO_TASKS, LABEL_STUDIO_CONFIG = "label_studio_tasks.json", "label_studio_config.xml"
IMAGEFOLDER_EXPORT, IMAGEFOLDER_METADATA = "imagefolder", "metadata.csv"
# `python -m facemask detect`: the table of every face, in its output folder (default ./detections/).
DETECTIONS_CSV, DETECTIONS_JSON = "detections.csv", "detections.json"
# `python -m facemask explain`: every image's map, in its output folder (default ./explanations/),
# beside one overlay per image (output_name).
EXPLANATIONS_JSON = "explanations.json"

OUTPUTS: List[Output] = [
    CONFIG, WEIGHTS, SHARDS, SHARD_INDEX, PROCESSOR, TRAINING_ARGS, EXPERIMENT, RUN_INFO, TRAIN_LOG, TRAIN_TEXT_LOG,
    ADAPTER, TEACHER, LOCK, STATE, ALL_RESULTS, CHECKPOINTS, TRACKER_LOGS, AUDIT_JSON, AUDIT_MD, OPERATING_POINTS, RESULTS, PREDICTIONS, CONFUSION,
    CONFUSION_FIGURE, REPORT, ROC_FIGURE, SLICES, CALIBRATION, CALIBRATION_FIGURE, INTERVALS, ERRORS, ERRORS_FIGURE,
    SHORTCUT_TEST, ROBUSTNESS, ROBUSTNESS_FIGURE, OCCLUSION_FIGURE, CARD, CURVES_FIGURE, PRETRAINING, PRETRAINING_IMAGES, PRETRAINING_LOSS_FIGURE, RECONSTRUCTIONS_FIGURE,
    RUN_IMAGES, SELECT_DIR,
    ONNX_GRAPH, ONNX_INT8, PARITY, HANDLER, HANDLER_CONFIG, SPACE_DIR,
]
ONNX_FILES = {"onnx": ONNX_GRAPH.name.split("/")[-1], "onnx-int8": ONNX_INT8.name.split("/")[-1]}
# What a push publishes, and the remote files it owns (deleting those the new push no longer has).
PUSH_PATTERNS = [o.pattern for o in OUTPUTS if o.pushed]
# What evaluate.py --update-card copies from its output folder into the run folder: the split's files.
SPLIT_OUTPUTS = [o for o in OUTPUTS if o.per_split]
# Files only a run (train.py) writes: a folder holding one of them, or checkpoints, is a run folder.
RUN_MARKERS = (EXPERIMENT.name, RUN_INFO.name, RESULTS.path(Path(), "train").name, ALL_RESULTS.name, STATE.name,
               AUDIT_JSON.name, PRETRAINING.name)


def run_held(directory: Path) -> Optional[str]:
    """The file (or checkpoint folder) that shows `directory` holds a run, or None. A data audit
    alone is not one: `python -m facemask audit` writes it to a folder of its own."""
    directory = Path(directory)
    held = [m for m in RUN_MARKERS if m != AUDIT_JSON.name and (directory / m).is_file()]
    held += [p.name for p in sorted(directory.glob(CHECKPOINTS.name)) if p.is_dir()] if directory.is_dir() else []
    return held[0] if held else None


def output_name(path: Path, suffix: str, taken: set) -> str:
    """A name in an output folder (detect's annotated copies, explain's overlays) for an input's
    file that no other input of this run, and no file already there (unless --overwrite), has."""
    stem, n = path.stem, 1
    name = f"{stem}{suffix}"
    while name.lower() in taken:
        n += 1
        name = f"{stem}-{n}{suffix}"
    taken.add(name.lower())
    return name


def split_files(directory: Path, prefix: str) -> List[Path]:
    """The per-split files of `prefix` that `directory` holds."""
    return [o.path(directory, prefix) for o in SPLIT_OUTPUTS if o.path(directory, prefix).is_file()]


def unknown_files(directory: Path) -> List[str]:
    """Top-level names in `directory` that no entry of OUTPUTS names."""
    top = {o.pattern.split("/")[0] for o in OUTPUTS}
    return sorted(p.name for p in Path(directory).iterdir()
                  if not any(fnmatch.fnmatchcase(p.name, pattern) for pattern in top))


def outputs_table() -> str:
    """The table of docs/outputs.md."""
    lines = ["| file | written by | what it holds | pushed |", "|---|---|---|---|"]
    for o in OUTPUTS:
        lines.append(f"| `{o.name}` | {o.writer} | {o.content} | {'yes' if o.pushed else 'no'} |")
    return "\n".join(lines) + "\n"


# The metric prefix of each split a training run evaluates (as in transformers' example scripts),
# and the split each prefix measured.
PREFIXES = {"validation": "eval", "test": "test"}
SPLIT_NAMES = {prefix: split for split, prefix in PREFIXES.items()}


@dataclass
class RunFiles:
    directory: Path
    experiment: Dict[str, Any] = field(default_factory=dict)
    results: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    state: Dict[str, Any] = field(default_factory=dict)
    model_config: Dict[str, Any] = field(default_factory=dict)
    run_info: Dict[str, Any] = field(default_factory=dict)
    confusion: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    audit: Optional[str] = None
    audit_report: Dict[str, Any] = field(default_factory=dict)
    # Per Trainer prefix (eval, test): what evaluation/analysis.py wrote.
    slices: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    calibration: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    intervals: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    errors: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    shortcut_tests: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    robustness: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    operating_points: Dict[str, Any] = field(default_factory=dict)
    onnx: Dict[str, Any] = field(default_factory=dict)  # onnx/parity.json (python -m facemask export)
    teacher: Dict[str, Any] = field(default_factory=dict)  # teacher.json (recipe.distill)
    pretraining: Dict[str, Any] = field(default_factory=dict)  # pretraining.json (a pretraining run)
    adapter_bytes: Optional[int] = None  # adapter/adapter_model.safetensors (model.peft)


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_json(path: Path, payload: Any) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _split_order(prefix: str) -> tuple:
    """train, then the training run's splits in PREFIXES order, then any other split by name."""
    order = ["train", *PREFIXES.values()]
    return (order.index(prefix) if prefix in order else len(order), prefix)


def _per_split(directory: Path, output: Output, by_name: bool = False) -> Dict[str, Dict[str, Any]]:
    """{prefix: content} of every file of a per-split output, in split order (or file-name order)."""
    suffix = output.name[len(PREFIX):]
    found = {p.name[: -len(suffix)]: p for p in directory.glob(f"*{suffix}") if p.name != ALL_RESULTS.name}
    return {prefix: read_json(found[prefix]) for prefix in sorted(found, key=None if by_name else _split_order)}


def read_run(directory: str | Path) -> RunFiles:
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"run folder not found: {directory}: point at a training run's output folder")
    run = RunFiles(directory)
    experiment = EXPERIMENT.path(directory)
    if experiment.is_file():
        run.experiment = yaml.safe_load(experiment.read_text(encoding="utf-8")) or {}
    run.results = _per_split(directory, RESULTS)
    run.state = read_json(STATE.path(directory))
    run.model_config = read_json(CONFIG.path(directory))
    run.run_info = read_json(RUN_INFO.path(directory))
    if AUDIT_MD.path(directory).is_file():
        run.audit = AUDIT_MD.path(directory).read_text(encoding="utf-8").strip()
    run.confusion = _per_split(directory, CONFUSION, by_name=True)
    run.audit_report = read_json(AUDIT_JSON.path(directory))
    run.slices = _per_split(directory, SLICES)
    run.calibration = _per_split(directory, CALIBRATION)
    run.intervals = _per_split(directory, INTERVALS)
    run.errors = _per_split(directory, ERRORS)
    run.shortcut_tests = _per_split(directory, SHORTCUT_TEST)
    run.robustness = _per_split(directory, ROBUSTNESS)
    run.operating_points = read_json(OPERATING_POINTS.path(directory))
    run.onnx = read_json(PARITY.path(directory))
    run.teacher = read_json(TEACHER.path(directory))
    run.pretraining = read_json(PRETRAINING.path(directory))
    adapter = directory / ADAPTER_DIR / ADAPTER_WEIGHTS
    run.adapter_bytes = adapter.stat().st_size if adapter.is_file() else None
    return run


def prefix_of(split: str) -> str:
    """A split's metric prefix: validation -> eval, test -> test, an extra test set's name as it is."""
    return PREFIXES.get(split, split)


def split_name(prefix: str) -> str:
    return SPLIT_NAMES.get(prefix, prefix)
