"""TrainingArguments from the config, the batch size they amount to, and the run's log set-up."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

from transformers import TrainingArguments

from facemask.config.schema import ConfigError, ExperimentConfig
from facemask.run_folder import TRAIN_TEXT_LOG
from facemask.training.performance import dataloader_settings, hardware_switches, uses_gpu

logger = logging.getLogger("facemask")

# Defaults this project needs whatever the config says: the image column must reach the
# transform, and `labels` is our collator's key.
_TRAINING_DEFAULTS: Dict[str, Any] = {"remove_unused_columns": False, "label_names": ["labels"]}


# Experiment trackers that write locally (no account, no network), the modules they need and
# the pinned install command.
TRACKERS = {"tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard==2.21.0"),
            "trackio": (("trackio",), "pip install trackio==0.43.0")}


def check_trackers(report_to: Any) -> None:
    """A tracker named in training.report_to whose package is missing is an error before any
    work (the Trainer would otherwise fail after the data is prepared, or skip it silently)."""
    import importlib.util

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        if name in TRACKERS:
            modules, command = TRACKERS[name]
            if not any(importlib.util.find_spec(module) for module in modules):
                raise ConfigError(f"'training.report_to' includes {name!r}, but its package is not installed: "
                                  f"{command}")


def training_arguments(cfg: ExperimentConfig) -> TrainingArguments:
    """TrainingArguments from the config, with the machine-dependent fields it leaves unset filled
    in, and switches this machine cannot honour (fp16 on CPU, ...) turned off with a warning."""
    if cfg.training.get("remove_unused_columns"):
        raise ConfigError("'training.remove_unused_columns' must stay false: the image column feeds the transform")
    check_trackers(cfg.training.get("report_to"))
    values, notes = hardware_switches(cfg.training)
    for note in notes:
        logger.warning(note)
    values.update(dataloader_settings(cfg.training, cfg.data.preprocess))
    try:
        return TrainingArguments(**{**_TRAINING_DEFAULTS, **values})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"training: {err}") from None


def evaluation_arguments(output_dir: Path, batch_size: int, preprocess: str) -> TrainingArguments:
    """TrainingArguments for predicting only (evaluate.py): on a GPU when there is one, quiet."""
    import torch

    use_cpu = not torch.cuda.is_available()
    return TrainingArguments(output_dir=str(output_dir), per_device_eval_batch_size=batch_size, use_cpu=use_cpu,
                             report_to="none", disable_tqdm=True, **_TRAINING_DEFAULTS,
                             **dataloader_settings({"use_cpu": use_cpu}, preprocess))


def log_dataloader(cfg: ExperimentConfig, args: TrainingArguments) -> None:
    chosen = "set in the config" if "dataloader_num_workers" in cfg.training else (
        f"chosen for {os.cpu_count()} cores, {'GPU' if uses_gpu(cfg.training) else 'CPU'} training; "
        "training.dataloader_* overrides")
    logger.info("input pipeline: %s; DataLoader with %d worker(s), pin_memory=%s, persistent_workers=%s (%s)",
                cfg.data.preprocess, args.dataloader_num_workers, args.dataloader_pin_memory,
                args.dataloader_persistent_workers, chosen)


def gpus_per_process(args: Any) -> int:
    """GPUs one process drives: several when `python train.py` runs on a multi-GPU host (the
    Trainer wraps the model in DataParallel), one under a distributed launch or none on CPU."""
    return max(1, int(getattr(args, "n_gpu", 0) or 0))


def effective_batch_size(args: Any) -> int:
    """Images per optimizer step, in every launch mode: per device x GPUs per process x
    accumulation steps x processes. The log, run_info.json and the card all take it from here."""
    return (args.per_device_train_batch_size * gpus_per_process(args) * args.gradient_accumulation_steps
            * args.world_size)


def log_batch_size(args: TrainingArguments) -> None:
    logger.info(
        "effective batch size %d = %d per device x %d device(s) per process x %d accumulation steps x %d processes; "
        "learning rate %g is used as given, not scaled with the batch size", effective_batch_size(args),
        args.per_device_train_batch_size, gpus_per_process(args), args.gradient_accumulation_steps, args.world_size,
        args.learning_rate)


_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


class _OwnMessages(logging.Filter):
    """The console shows the run's own messages and anyone's errors; libraries' warnings too unless
    a run's log file (`log_file`) takes them, which takes everything."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("facemask"):
            return record.levelno >= self.level
        # Every library record passes here: `log_file` counts its handlers, so no scan of the root's.
        return record.levelno >= (logging.ERROR if _FILE_LOGS[0] else logging.WARNING)


_FILE_LOGS = [0]  # how many run log files (`log_file`) take every record now


def setup_logging(args: TrainingArguments) -> None:
    """The console says what the run does: the run's own log lines, the one training bar (the
    Trainer's callback), one line per evaluation and the metric blocks. Libraries' messages, their
    warnings and their progress bars (dataset saving and mapping, shard writing, downloads) go to
    the run's log file only (`log_file`)."""
    import datasets
    import huggingface_hub
    import transformers

    level = logging.INFO if args.should_log else logging.WARNING
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, "_facemask_console", False)]:
        root.removeHandler(handler)  # set up again by a later run in the same process
    console = logging.StreamHandler()
    console.setFormatter(_FORMAT)
    console.addFilter(_OwnMessages(level))
    console._facemask_console = True  # type: ignore[attr-defined]
    root.addHandler(console)
    logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    for library in (transformers.utils.logging, datasets.utils.logging):
        library.set_verbosity_info()
        library.disable_progress_bar()
    transformers.utils.logging.disable_default_handler()
    transformers.utils.logging.enable_propagation()
    datasets.utils.logging.get_logger().handlers.clear()
    huggingface_hub.utils.disable_progress_bars()


@contextmanager
def log_file(output_dir: Path) -> Iterator[Path]:
    """Every message of the run, libraries' included, appended to OUTPUT_DIR/train.log while the
    block runs (a resumed run adds to the same file)."""
    path = TRAIN_TEXT_LOG.path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(_FORMAT)
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    _FILE_LOGS[0] += 1
    try:
        yield path
    finally:
        _FILE_LOGS[0] -= 1
        logging.getLogger().removeHandler(handler)
        handler.close()
