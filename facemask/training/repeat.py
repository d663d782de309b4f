"""python -m facemask repeat CONFIG --seeds 0 1 2 | --folds K [key=value ...]: one config run several
times, to say how far its figures can be trusted.

Each run is `python -m facemask train CONFIG ... training.output_dir=OUTPUT_DIR/seed-N` (or fold-N, with
data.cv_folds / data.cv_fold: validation is fold N of K over the training data, duplicate groups
on one side, classes stratified), one after another, each in a fresh process. A run whose folder
holds its card (written last) is finished and is not run again, so the same command resumes an
interrupted repeat; an unfinished folder is started over. OUTPUT_DIR gets every run's metrics with
their mean, spread and range (repeat_results.csv / .json, printed too) and a summary card (README.md).

The spread says what the runs are. Seeds: the standard error of the mean, the runs taken as
independent. Folds are not: any two share K-2 of their K-1 training folds, and they all score the
same test split. So folds get the standard deviation over folds and, for the
validation-fold metrics only, Nadeau & Bengio's corrected standard error (see `summarise`); a
metric of a split every fold shares (test, an extra test set) gets none.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from facemask import CARD_TEMPLATES
from facemask.config.dump import redact
from facemask.config.schema import ConfigError
from facemask.run_folder import (CARD, INTERVALS, PREFIXES, REPEAT_RESULTS_CSV, REPEAT_RESULTS_JSON, RUN_INFO,
                                 RUN_MARKERS, prefix_of, read_json, read_run, write_json)
from facemask.training.resume import RunLock, add_force_argument

HEADLINE = ("accuracy", "balanced_accuracy", "f1", "precision", "recall", "roc_auc", "loss")
SHOWN = ("accuracy", "balanced_accuracy", "f1", "roc_auc")
NEAR_CHANCE = 0.05  # accuracy above always answering the largest class that a run must pass to count as learned
TEMPLATE = CARD_TEMPLATES / "repeat.md.j2"
# The corrected standard error of cross-validation folds: Nadeau & Bengio (2003), "Inference for the
# Generalization Error", Machine Learning 52:239-281. The key names its source.
CORRECTED_SE = "se_nadeau_bengio_2003"
SPREAD_NOTES = {
    "se": "standard error of the mean: sample standard deviation over the runs / sqrt(n), the runs taken as "
          "independent (each seed draws its own synthetic images and splits; on a fixed image source the seeds "
          "share images and this is too small)",
    "sd": "sample standard deviation over the folds (how far a figure moves with the fold); not a standard "
          "error: the folds share training images and the test split",
    CORRECTED_SE: "validation-fold metrics only: sqrt((1/n + n_validation/n_train) * sd^2), Nadeau & Bengio "
                  "(2003), Machine Learning 52:239-281, for the overlap of the folds' training data; an "
                  "approximation, as no unbiased estimator of the variance of K-fold cross-validation exists "
                  "(Bengio & Grandvalet 2004, JMLR 5:1089-1105)",
}


class RepeatError(RuntimeError):
    """A run of the repeat failed; the runs before it stand, and the same command goes on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--seeds", nargs="+", metavar="SEED", help="run once per seed (training.seed); the first "
                                                                 "key=value after them ends the list")
    what.add_argument("--folds", type=int, metavar="K", help="K-fold cross-validation over the training data")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run, e.g. training.num_train_epochs=3")
    add_force_argument(parser)


def runs_of(args: argparse.Namespace) -> Tuple[List[Tuple[str, List[str]]], List[str]]:
    """[(folder name, the run's own overrides)], and the overrides shared by all: argparse gives
    `--seeds 0 1 data.x=1` all to --seeds, so the first item that is not a whole number ends them."""
    overrides = list(args.overrides)
    if args.folds is not None:
        if args.folds < 2:
            raise ConfigError("--folds must be at least 2")
        return [(f"fold-{k}", [f"data.cv_folds={args.folds}", f"data.cv_fold={k}"]) for k in range(args.folds)], \
            overrides
    seeds: List[int] = []
    for position, item in enumerate(args.seeds):
        try:
            seeds.append(int(item))
        except ValueError:
            overrides = list(args.seeds[position:]) + overrides
            break
    if not seeds:
        raise ConfigError("--seeds needs at least one whole number")
    if min(seeds) < 0:
        raise ConfigError(f"--seeds must be whole numbers from 0: {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds lists a seed twice: {seeds}")
    return [(f"seed-{seed}", [f"training.seed={seed}"]) for seed in seeds], overrides


def finished(folder: Path) -> bool:
    return CARD.path(folder).is_file()


def run_one(config: str, folder: Path, overrides: List[str], force: bool = False) -> None:
    # Each run keeps to its folder: none pushes to the Hub (they would all push to one model id).
    # Through the package, as `python -m facemask train`: the same code, installed or in a checkout.
    command = [sys.executable, "-m", "facemask", "train", config, *overrides, "hub.push=false",
               f"training.output_dir={folder}"]
    if any((folder / marker).exists() for marker in RUN_MARKERS):
        command.append("--overwrite")  # an interrupted run of this repeat: started over
    if force:
        command.append("--force")
    print(f"{folder.name}: python {' '.join(command[1:])}", flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        raise RepeatError(f"{folder.name} failed (exit code {done.returncode}; its log is {folder / 'train.log'}). "
                          "The finished runs stand: run the same command again to go on from this one")


def run_metrics(folder: Path) -> Dict[str, float]:
    """A finished run's headline metrics of every evaluated split, and its training time."""
    results = read_run(folder).results
    row = {f"{prefix}_{name}": metrics[f"{prefix}_{name}"] for prefix, metrics in results.items()
           if prefix != "train" for name in HEADLINE if f"{prefix}_{name}" in metrics}
    if "train_runtime" in results.get("train", {}):
        row["train_runtime"] = results["train"]["train_runtime"]
    return row


def summarise(rows: List[Dict[str, Any]], holdout_ratio: Optional[float] = None) -> Dict[str, Dict[str, Any]]:
    """Per metric, over the runs that have it (n; a metric missing from some runs is kept, with its
    own n): mean, range and the spread of `SPREAD_NOTES`. Seeds (holdout_ratio None): the standard
    error `se`. Folds (holdout_ratio: the validation fold's size over the training part's, the
    n_test/n_train of Nadeau & Bengio): `sd`, and for the validation-fold metrics the corrected
    standard error, since each fold's validation images are its own but any two folds' training
    data overlap. A split every fold scores whole (test, extra test sets) has no resampled test
    set, so no standard error over folds is given for it."""
    keys = list(dict.fromkeys(k for row in rows for k in row if k not in ("run", "seed", "fold")))
    held_out = f"{prefix_of('validation')}_"
    summary = {}
    for key in keys:
        values = [float(r[key]) for r in rows if r.get(key) is not None]
        n = len(values)
        if not n:
            continue
        mean = statistics.fmean(values)
        sd = statistics.stdev(values) if n > 1 else None
        entry: Dict[str, Any] = {"mean": mean}
        if holdout_ratio is None:
            entry["se"] = sd / math.sqrt(n) if sd is not None else None
        else:
            entry["sd"] = sd
            entry[CORRECTED_SE] = (math.sqrt((1 / n + holdout_ratio) * sd ** 2)
                                   if sd is not None and key.startswith(held_out) else None)
        summary[key] = {**entry, "min": min(values), "max": max(values), "n": n}
    return summary


def holdout_ratio(folders: List[Path]) -> float:
    """The folds' mean validation size over training size, from their run_info.json (1/(K-1) when
    a run does not say: folds of equal size)."""
    ratios = []
    for folder in folders:
        splits = ((read_run(folder).run_info or {}).get("data") or {}).get("splits") or {}
        train, validation = (splits.get(name, {}).get("num_images") for name in ("train", "validation"))
        if train and validation:
            ratios.append(validation / train)
    return statistics.fmean(ratios) if len(ratios) == len(folders) else 1 / (len(folders) - 1)


def table(rows: List[Dict[str, Any]], summary: Dict[str, Dict[str, Any]]) -> str:
    """Every run, then mean ± SE (seeds) or mean, SD and corrected SE (folds), and the range; a
    metric that some runs lack says over how many its figures are."""
    shown = [k for k in summary if any(k.endswith(f"_{name}") for name in SHOWN) or k == "train_runtime"]
    lines = ["| run | " + " | ".join(shown) + " |", "|---|" + "---:|" * len(shown)]
    for row in rows:
        lines.append(f"| {row['run']} | " + " | ".join(_number(row.get(k)) for k in shown) + " |")

    def of(key: str) -> str:
        n = summary[key]["n"]
        return f" ({n} of {len(rows)} runs)" if n < len(rows) else ""

    if any("sd" in summary[k] for k in shown):  # folds
        lines.append("| mean | " + " | ".join(f"{_number(summary[k]['mean'])}{of(k)}" for k in shown) + " |")
        for key, label in (("sd", "SD over folds"), (CORRECTED_SE, "SE, corrected (Nadeau & Bengio 2003)")):
            lines.append(f"| {label} | " + " | ".join(
                _number(summary[k][key], summary[k]["mean"]) for k in shown) + " |")
    else:
        lines.append("| mean ± SE | " + " | ".join(
            f"{_number(summary[k]['mean'])} ± {_number(summary[k]['se'], summary[k]['mean'])}{of(k)}"
            for k in shown) + " |")
    lines.append("| range | " + " | ".join(
        f"{_number(summary[k]['min'])}-{_number(summary[k]['max'])}" for k in shown) + " |")
    return "\n".join(lines)


def _number(value: Optional[float], like: Optional[float] = None) -> str:
    """Seconds to one decimal, scores to four; a standard error `like` its mean."""
    if value is None:
        return "n/a"
    return f"{value:.1f}" if abs(value if like is None else like) >= 10 else f"{value:.4f}"


def write_outputs(out: Path, config: str, argv: List[str], rows: List[Dict[str, Any]],
                  summary: Dict[str, Dict[str, float]], kind: str) -> None:
    """repeat_results.csv / .json and the summary card; `argv` is the command after `python -m facemask`."""
    import jinja2
    import torch

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (out / REPEAT_RESULTS_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    machine = (f"{platform.system()} {platform.machine()}, {_cores()} CPU cores, torch {torch.__version__}"
               + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    command = redact("python -m facemask " + " ".join(argv))
    spreads = {key for metric in summary.values() for key in metric if key in SPREAD_NOTES}
    write_json(out / REPEAT_RESULTS_JSON, {"config": Path(config).name, "command": command, "kind": kind,
                                           "machine": machine, "measured_on": measured_on(out, rows),
                                           "runs": rows, "summary": summary,
                                           "spread": {k: v for k, v in SPREAD_NOTES.items() if k in spreads}})
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), keep_trailing_newline=True)
    CARD.path(out).write_text(env.get_template(TEMPLATE.name).render(
        config=Path(config).name, command=command, kind=kind, machine=machine, runs=len(rows),
        table=table(rows, summary), summary=summary, files=(REPEAT_RESULTS_CSV, REPEAT_RESULTS_JSON),
        validation_prefix=prefix_of("validation"), intervals=INTERVALS.path(Path(), prefix_of("test")).name),
        encoding="utf-8")


def measured_on(out: Path, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """What the figures were measured on, from the runs' own records: each run's commit and data
    fingerprint (for the drawn set: its parameters and generator), and the recipe they share. A
    figure quoted elsewhere is stale when these differ from what the config gives now
    (tests/test_quickstart.py checks the README's)."""
    import yaml

    from facemask.run_folder import EXPERIMENT, RUN_INFO, read_json
    from facemask.training.provenance import recipe_of

    from facemask.config.loading import load_config
    from facemask.training.provenance import drawn_probe

    runs = {}
    for row in rows:
        info = read_json(RUN_INFO.path(out / row["run"]))
        data = dict(info.get("data_fingerprint") or {})
        experiment = EXPERIMENT.path(out / row["run"])
        if data.get("kind") == "synthetic" and "probe_sha256" not in data and experiment.is_file():
            # A run recorded before the probe was: its seed's images drawn again now, and said so.
            try:
                data["probe_sha256"] = drawn_probe(load_config(experiment), data.get("seed", 0))
                data["probe_drawn_when_summarised"] = True
            except ConfigError as err:  # its config no longer loads: the figures stand, unfingerprinted
                data["probe_sha256"] = None
                data["probe_error"] = str(err).splitlines()[0]
        runs[row["run"]] = {"git": info.get("git") or {}, "data": data}
    first = EXPERIMENT.path(out / rows[0]["run"]) if rows else None
    recipe = recipe_of(yaml.safe_load(first.read_text(encoding="utf-8"))) if first and first.is_file() else {}
    return {"runs": runs, "recipe": recipe}


def stale_because(record: Dict[str, Any], cfg: Any) -> List[str]:
    """Why figures in a repeat_results.json (`record`) would not be measured again by `cfg` as it is
    now: another drawn set (its parameters, or the images a seed draws, by content) or another
    recipe (a value the runs had that differs now; keys added since are passed over). Empty when
    they stand. Only drawn sets are checked by content; other data is read to be fingerprinted."""
    import yaml

    from facemask.config.dump import to_yaml
    from facemask.training.provenance import drawn_probe, drawn_set, recipe_of

    reasons = []
    measured = record.get("measured_on") or {}
    if not measured.get("runs"):
        return ["the record does not say what it was measured on (measured_on)"]
    if cfg.data.synthetic:
        params = {k: v for k, v in drawn_set(cfg).items() if k != "generator_sha256"}
        for run, facts in measured["runs"].items():
            data = facts.get("data") or {}
            now = {**params, "probe_sha256": drawn_probe(cfg, data.get("seed", cfg.seed))}
            then = {key: data.get(key) for key in now}
            if then != now:
                differ = ", ".join(f"{k} {then[k]!r} then, {now[k]!r} now" for k in now if then[k] != now[k])
                reasons.append(f"{run} was measured on another drawn set ({differ})")
    recipe_now, recipe_then = recipe_of(yaml.safe_load(to_yaml(cfg))), measured.get("recipe") or {}
    for section, values in recipe_now.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if key in (recipe_then.get(section) or {}) and recipe_then[section][key] != value:
                    reasons.append(f"{section}.{key} was {recipe_then[section][key]!r}, is {value!r} now")
    return reasons


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def output_folder(config: str, overrides: List[str], what: str, suffix: str = "-repeat") -> Path:
    """OUTPUT_DIR of the config, created; refused when it holds a training run, which `what` (the
    runs and the files written beside them) would mix with (OUTPUT_DIR`suffix` is offered instead)."""
    from facemask.config.loading import load_config

    out = load_config(config, overrides).output_dir
    held = [marker for marker in RUN_MARKERS if (Path(out) / marker).exists()]
    if held:
        raise ConfigError(f"{out} holds a training run ({held[0]}): {what} would go into it. Give it its own "
                          f"folder: training.output_dir={out}{suffix}")
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out)


def train_runs(config: str, out: Path, runs: List[Tuple[str, List[str]]], overrides: List[str],
               force: bool = False) -> None:
    """Each run not finished earlier, in its folder under `out`; a failed run raises RepeatError.
    `force` (--force) is handed to each run: it takes its folder's lock from another host at once."""
    for name, own in runs:
        folder = out / name
        if finished(folder):
            print(f"{name}: finished earlier ({CARD.path(folder)}): not run again", flush=True)
            continue
        run_one(config, folder, overrides + own, force)


def summarise_runs(out: Path, runs: List[Tuple[str, List[str]]],
                   folds: bool) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """Every finished run's metrics (a row each; a metric some runs lack is said on stderr) and their
    summary (`summarise`)."""
    rows = []
    for name, _ in runs:
        number = int(name.split("-")[1])
        rows.append({"run": name, name.split("-")[0]: number, **run_metrics(out / name)})
    missing = {k: [r["run"] for r in rows if k not in r] for k in dict.fromkeys(k for r in rows for k in r)}
    for key, runs_without in missing.items():
        if runs_without:
            print(f"warning: {key} is missing from {', '.join(runs_without)}: its figures are over the other runs",
                  file=sys.stderr)
    ratio = holdout_ratio([out / name for name, _ in runs]) if folds else None
    return rows, summarise(rows, ratio)


def warn_near_chance(out: Path, rows: List[Dict[str, Any]]) -> None:
    """Runs within NEAR_CHANCE of always answering a split's largest class have not learned the task:
    their mean and spread describe noise, not the config (label-issues warns of its folds alike)."""
    weak = []
    for row in rows:
        splits = (read_json(RUN_INFO.path(out / row["run"])).get("data") or {}).get("splits") or {}
        for split, prefix in PREFIXES.items():
            counts = (splits.get(split) or {}).get("class_counts") or {}
            accuracy = row.get(f"{prefix}_accuracy")
            if accuracy is not None and sum(counts.values()):
                floor = max(counts.values()) / sum(counts.values())
                if accuracy < floor + NEAR_CHANCE:
                    weak.append(f"{row['run']} {split} {accuracy:.3f} (largest class {floor:.3f})")
    if weak:
        print(f"warning: accuracy within {NEAR_CHANCE * 100:.0f} points of always answering the largest class: "
              f"{', '.join(weak)}. Those runs have not learned the task, so the figures below say little about the "
              "config: train longer (training.num_train_epochs or training.max_steps) and run again", file=sys.stderr)


def command(args: argparse.Namespace) -> int:
    """`python -m facemask repeat`; a ConfigError is the CLI's to report (exit code 2)."""
    runs, overrides = runs_of(args)
    what = f"--folds {args.folds}" if args.folds else "--seeds " + " ".join(n.split("-")[1] for n, _ in runs)
    out = output_folder(args.config, overrides, "the repeat's runs and summary card")
    # One repeat per folder, as one run per run folder: another repeat (on another node too) is refused.
    with RunLock(out, force=args.force):
        try:
            train_runs(args.config, out, runs, overrides, args.force)
        except RepeatError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        rows, summary = summarise_runs(out, runs, folds=bool(args.folds))
        warn_near_chance(out, rows)
        kind = f"{len(runs)} folds" if args.folds else f"{len(runs)} seeds"
        write_outputs(out, args.config, ["repeat", args.config, what, *overrides], rows, summary, kind)
    print(table(rows, summary))
    print(f"wrote {out / REPEAT_RESULTS_CSV}, {REPEAT_RESULTS_JSON} and the summary card {CARD.path(out)}")
    return 0
