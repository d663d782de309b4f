"""The run's decision rule: the arg-max, or with --threshold (a number or a row of the run's
operating_points.json) the positive class where its probability reaches the threshold.

A row of operating_points.json is a threshold on the probability of the class the table names
(`positive_label`: the run's data.positive_label, the mask class by default), so a named point is
applied to that class and to no other: a --positive-label that names another is an error. A table
without the key (none that train.py wrote) takes the class from the run's experiment.yaml, as
train.py chose it; with neither, a named point is refused rather than guessed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from facemask import run_folder
from facemask.config.schema import ConfigError
from facemask.data.labels import resolve_positive_label


def decide(probs: np.ndarray, threshold: Optional[float] = None, positive: int = 1) -> np.ndarray:
    """The predicted class of each row: the arg-max, or with a threshold (two-label models) the
    positive class where its probability reaches it and the other class elsewhere."""
    if threshold is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


@dataclass(frozen=True)
class DecisionRule:
    """The arg-max (threshold None), or labels[positive] where its probability is >= threshold."""

    threshold: Optional[float]
    positive: int
    positive_label: str


def run_positive_label(run_dir: Path, labels: List[str],
                       table: Optional[Dict[str, Any]] = None) -> Tuple[Optional[str], str]:
    """(the class the run scored as positive, where that was read), or (None, why not) for a folder
    that records neither (a model without its run's files). `table` is the run's
    operating_points.json where the caller has read it already."""
    path = run_folder.OPERATING_POINTS.path(run_dir)
    table = run_folder.read_json(path) if table is None else table
    named = table.get("positive_label")
    if named is not None:
        if named not in labels:
            raise ConfigError(f"{path}: its thresholds are on the class {named!r} ('positive_label'), which the "
                              f"model does not have (its classes: {', '.join(labels)}): the table is not this "
                              "model's; keep the run's own operating_points.json beside its model")
        return named, f"{path.name}'s positive_label"
    experiment = run_folder.EXPERIMENT.path(run_dir)
    if experiment.is_file():
        import yaml

        data = (yaml.safe_load(experiment.read_text(encoding="utf-8")) or {}).get("data") or {}
        try:
            index = resolve_positive_label(labels, data.get("positive_label"))
        except ConfigError as err:
            raise ConfigError(f"{experiment}: {err}") from None
        return labels[index], f"data.positive_label in {experiment.name}"
    return None, f"neither {path.name} ('positive_label') nor {experiment.name} (data.positive_label) names it"


def threshold_from(run_dir: Path, value: str) -> float:
    """A --threshold argument: a number, or a row name of the run's operating_points.json."""
    try:
        return float(value)
    except ValueError:
        pass
    path = run_folder.OPERATING_POINTS.path(run_dir)
    if not path.is_file():
        raise ValueError(f"--threshold {value!r}: not a number, and {path} does not exist")
    table = run_folder.read_json(path)
    names = {row["name"]: row["threshold"] for row in table["rows"]}
    if value not in names:
        raise ValueError(f"--threshold {value!r}: the run's operating points are {', '.join(map(repr, names))}")
    if names[value] is None:
        raise ValueError(f"--threshold {value!r} was not reachable on the validation split")
    return float(names[value])


def decision_rule(run_dir: Path, labels: List[str], threshold: Optional[str],
                  positive_label: Optional[str]) -> DecisionRule:
    """--threshold / --positive-label of predict, detect, serve and push --handler, checked against the
    model's labels. A named operating point applies to the class its table names; a number to
    --positive-label's class, else the run's positive class, else the mask class."""
    try:
        given = None if positive_label is None else resolve_positive_label(labels, positive_label)
        if threshold is None:
            if positive_label is not None:
                raise ValueError("--positive-label goes with --threshold")
            default = resolve_positive_label(labels, None)
            return DecisionRule(None, default, labels[default])
        if len(labels) != 2:
            raise ValueError("--threshold needs a model with two labels")
        value = threshold_from(run_dir, threshold)
        named = _is_name(threshold)
        if not named and given is not None:  # a number on the class asked for: the run's files are not needed
            return DecisionRule(value, given, labels[given])
        run_class, source = run_positive_label(run_dir, labels)
        if named and run_class is None:
            raise ValueError(f"--threshold {threshold!r}: the operating point's class is not recorded ({source}), "
                             "so it is not known which probability the threshold is on; give the threshold as a "
                             "number with --positive-label (the table's thresholds, on the class you know it was "
                             "chosen for)")
        if named and given is not None and labels[given] != run_class:
            raise ValueError(f"--threshold {threshold!r} is a threshold on P({run_class}) ({source}), but "
                             f"--positive-label is {positive_label!r}: leave --positive-label out, or give a number "
                             "as --threshold")
        if given is None:
            given = labels.index(run_class) if run_class is not None else resolve_positive_label(labels, None)
        return DecisionRule(value, given, labels[given])
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _is_name(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return True
    return False


def add_rule_arguments(parser: Any, prefix: str = "") -> None:
    """--threshold and --positive-label, as predict, detect and `push --handler` take them
    (`prefix`: what the options are for, where they do not apply to the command itself)."""
    parser.add_argument("--threshold", metavar="T",
                        help=f"{prefix}predict the positive class when its probability is >= T: a number, or a row of "
                             "the run's operating_points.json ('best F1', 'precision>=0.99', 'recall>=0.99')")
    parser.add_argument("--positive-label",
                        help=f"{prefix}the class a numeric --threshold applies to (default: the run's positive "
                             "class, else the mask class); a named operating point applies to its table's class")


def rule_from_arguments(args: Any, labels: List[str]) -> DecisionRule:
    """The rule --threshold / --positive-label ask for, checked against the model's labels; a
    named point's number is said on stderr, since it sits in a file the user has not opened."""
    import sys

    rule = decision_rule(Path(args.model), labels, args.threshold, args.positive_label)
    if rule.threshold is not None:
        print(f"decision rule: {rule.positive_label} where P({rule.positive_label}) >= {rule.threshold:.6g} "
              f"(--threshold {args.threshold!r}), else the other class", file=sys.stderr)
    return rule
