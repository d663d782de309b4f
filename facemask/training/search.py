"""Hyperparameter search: `python -m facemask search CONFIG --trials N`.

Runs `Trainer.hyperparameter_search` with the Optuna backend over `search.space` (any training.*,
recipe.*, model.config_overrides.* / model.from_config.* / model.peft.* field, or the augmentation's crop and
flip), on the config's data prepared once. Each trial trains from a fresh model with the trial's
values applied to the whole config; trials whose evaluations trail the median of earlier trials
at the same step are pruned. Writes, under the output folder: search_trials.csv and
search_trials.md (every trial, its values, state and evaluation metrics), best_config.yaml (the
config with the best trial's values, ready for `python train.py`), and search.db (the Optuna study).
The objective is the metric at a trial's last evaluation (no checkpoint is kept per trial).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from facemask.config.dump import to_yaml
from facemask.config.loading import load_config
from facemask.config.schema import ConfigError, ExperimentConfig
from facemask.run_folder import SEARCH_BEST_CONFIG, SEARCH_FILES, SEARCH_STUDY, SEARCH_TRIALS_CSV, SEARCH_TRIALS_MD

logger = logging.getLogger("facemask")

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "choice")
SEARCHABLE = ("training.", "recipe.", "model.config_overrides.", "model.from_config.", "model.peft.", "data.crop_scale",
              "data.crop_ratio", "data.hflip_prob")
# What a trial must not change: the search compares recipes, so every trial sees the same data
# and writes nothing that a trial after it would trip over.
FIXED_TRAINING = {"output_dir", "save_strategy", "load_best_model_at_end", "seed", "report_to"}


def parse_space(space: Dict[str, Any]) -> Dict[str, tuple]:
    """{key: (kind, arguments)}, checked; an error names the key and what it expected."""
    parsed = {}
    if not space:
        raise ConfigError("'search.space' is empty: give each key to search a distribution, e.g. "
                          "training.learning_rate: {log_uniform: [1.0e-4, 1.0e-2]}")
    for key, spec in space.items():
        if not key.startswith(SEARCHABLE):
            raise ConfigError(f"'search.space.{key}': only {', '.join(SEARCHABLE)} keys can be searched "
                              "(the data and the run folder stay fixed across trials)")
        if key.startswith("training.") and key.split(".", 1)[1] in FIXED_TRAINING:
            raise ConfigError(f"'search.space.{key}' is fixed during a search")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"'search.space.{key}': expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise ConfigError(f"'search.space.{key}.choice': expected a non-empty list")
        elif not (isinstance(args, list) and len(args) == 2 and args[0] < args[1]):
            raise ConfigError(f"'search.space.{key}.{kind}': expected [low, high] with low < high, got {args!r}")
        elif kind == "log_uniform" and args[0] <= 0:
            raise ConfigError(f"'search.space.{key}.log_uniform': low must be positive, got {args[0]}")
        parsed[key] = (kind, args)
    return parsed


def suggest(space: Dict[str, tuple], trial: Any) -> Dict[str, Any]:
    """The trial's value for every key (Optuna returns the same value when asked again)."""
    values = {}
    for key, (kind, args) in space.items():
        if kind == "log_uniform":
            values[key] = trial.suggest_float(key, args[0], args[1], log=True)
        elif kind == "uniform":
            values[key] = trial.suggest_float(key, args[0], args[1])
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(args[0]), int(args[1]))
        else:
            values[key] = args[trial.suggest_categorical(key, list(range(len(args))))]
    return values


def _override(key: str, value: Any) -> str:
    import json

    return f"{key}={json.dumps(value)}"


def trial_config(path: Optional[str], overrides: List[str], values: Dict[str, Any]) -> ExperimentConfig:
    return load_config(path, [*overrides, *(_override(k, v) for k, v in values.items())])


def config_values(space: Dict[str, tuple], params: Dict[str, Any]) -> Dict[str, Any]:
    """A trial's Optuna params as config values: a choice is stored as its index (lists and null
    are not Optuna categories)."""
    return {key: space[key][1][value] if space[key][0] == "choice" else value for key, value in params.items()}


def trials_table(study: Any, metric: str, space: Dict[str, tuple]) -> List[Dict[str, Any]]:
    rows = []
    for trial in study.trials:
        row = {"trial": trial.number, "state": trial.state.name.lower(), metric: trial.value}
        row.update(config_values(space, trial.params))
        for name, value in (trial.user_attrs.get("eval") or {}).items():
            if name != metric and not any(t in name for t in ("runtime", "per_second")):
                row[name] = value
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def write_tables(rows: List[Dict[str, Any]], folder: Path) -> None:
    columns: List[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(folder / SEARCH_TRIALS_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    (folder / SEARCH_TRIALS_MD).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _claim_folder(folder: Path, overwrite: bool) -> Path:
    """The search's folder, emptied of an earlier search's files with --overwrite (and only of them)."""
    if (folder / SEARCH_TRIALS_CSV).is_file() or (folder / SEARCH_STUDY).is_file():
        if not overwrite:
            raise ConfigError(f"{folder} already holds a search: pass --overwrite to replace it, or --output")
        for name in SEARCH_FILES:
            (folder / name).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _objective(cfg: ExperimentConfig) -> tuple[str, str]:
    """The metric a trial is judged by and its direction: search.metric / search.direction, else
    eval_<training.metric_for_best_model> in its natural direction."""
    metric_name = cfg.training.get("metric_for_best_model") or "loss"
    metric = cfg.search.metric or (metric_name if metric_name.startswith("eval_") else f"eval_{metric_name}")
    direction = cfg.search.direction or ("minimize" if metric.endswith("loss") else "maximize")
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"bad value for 'search.direction': expected maximize or minimize, got {direction!r}")
    return metric, direction


def run_search(config: str, overrides: List[str], trials: int, output: Optional[str] = None,
               overwrite: bool = False) -> Dict[str, Any]:
    import optuna

    from facemask.recipe.build import build_recipe
    from facemask.training.modeling import build_model
    from facemask.training.performance import uses_gpu
    from facemask.training.setup import RunSetup, sharded

    cfg = load_config(config, overrides)
    space = parse_space(cfg.search.space)
    for key, (_, args) in space.items():  # every key, with each value given, must make a valid config
        for value in args:
            trial_config(config, overrides, {key: value})
    if any(key.startswith("data.") for key in space) and cfg.data.preprocess != "cache":
        raise ConfigError("searching data.* augmentation keys needs data.preprocess=cache")
    folder = _claim_folder(Path(output) if output else Path(f"{cfg.output_dir}-search"), overwrite)
    metric, direction = _objective(cfg)
    trial_training = {**cfg.training, "output_dir": str(folder / "trials"), "save_strategy": "no",
                      "load_best_model_at_end": False, "report_to": "none"}
    cfg.training = trial_training
    run = RunSetup.start(cfg)
    ema_values = space.get("recipe.ema_decay", (None, []))[1]
    if sharded(run.args) and any(value is not None for value in ema_values):
        raise ConfigError("search.space varies 'recipe.ema_decay', which is not supported under FSDP or DeepSpeed "
                          "(each process would average only its shard): remove it from the space, or launch with DDP")
    args = run.args
    data = run.load_data().data
    if "validation" not in data.splits:
        raise ConfigError("a search needs a validation split to score trials: set data.validation_split > 0")

    def config_for(values: Dict[str, Any]) -> ExperimentConfig:
        trial = trial_config(config, overrides, values)
        trial.training = {**trial.training, **{k: v for k, v in trial_training.items() if k in FIXED_TRAINING}}
        return trial

    def model_init(trial: Any = None) -> Any:
        model_cfg = config_for(suggest(space, trial)).model if trial is not None else cfg.model
        return build_model(model_cfg, data.id2label, data.label2id, gpu=uses_gpu(cfg.training))

    trainer = run.build(model_init=model_init)
    train_labels = list(data.splits["train"][data.label_column])

    def setup(values: Dict[str, Any]) -> None:
        trial_cfg = config_for(values)
        trainer.recipe = build_recipe(trial_cfg, data.labels, train_labels, args.process_index, run.processor)
        if trainer.batch_transform is not None:
            trainer.batch_transform.cfg = trial_cfg.data

    trainer.search_setup = (lambda trial: suggest(space, trial), setup)
    storage = f"sqlite:///{(folder / SEARCH_STUDY).resolve()}"
    # Two complete trials before any is judged: one earlier trial is no median.
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2) if cfg.search.pruner == "median" else \
        optuna.pruners.NopPruner()
    sampler = optuna.samplers.TPESampler(seed=cfg.search.seed if cfg.search.seed is not None else args.seed)
    logger.info("search: %d trials over %s, %s %s", trials, ", ".join(space), direction, metric)

    def objective(metrics: Dict[str, float]) -> float:
        if metric not in metrics:
            raise ConfigError(f"'search.metric' {metric!r} is not among the evaluation's metrics: {sorted(metrics)}")
        return metrics[metric]

    best = trainer.hyperparameter_search(
        hp_space=lambda trial: suggest(space, trial), compute_objective=objective, n_trials=trials,
        direction=direction, backend="optuna", storage=storage, study_name="facemask-search", pruner=pruner,
        sampler=sampler)
    study = optuna.load_study(study_name="facemask-search", storage=storage)
    rows = trials_table(study, metric, space)
    write_tables(rows, folder)
    best_values = config_values(space, best.hyperparameters)
    path = folder / SEARCH_BEST_CONFIG
    header = (f"# Best of {trials} search trials (python -m facemask search {config} --trials {trials}):\n"
              f"# trial {best.run_id}, {metric} {best.objective:.6g} at its last evaluation; values searched:\n"
              + "".join(f"#   {k}: {v}\n" for k, v in best_values.items())
              + f"#   python train.py {path}\n"
              "# Expected: not measured as a full run (the trials kept no checkpoint).\n")
    path.write_text(header + to_yaml(trial_config(config, overrides, best_values)), encoding="utf-8")
    logger.info("search: best trial %s, %s = %.6g; wrote %s", best.run_id, metric, best.objective, folder)
    return {"best": best_values, "objective": best.objective, "trials": rows, "folder": str(folder)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.num_train_epochs=2")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--output", help="folder for the results (default: OUTPUT_DIR-search)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier search in that folder")


def command(args: argparse.Namespace) -> int:
    """`python -m facemask search`; a ConfigError is the CLI's to report (exit code 2)."""
    if args.trials < 1:
        raise ConfigError("--trials must be at least 1")
    run_search(args.config, args.overrides, args.trials, args.output, args.overwrite)
    return 0
