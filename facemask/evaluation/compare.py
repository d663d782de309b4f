"""Two runs judged on the same images (`python -m facemask compare RUN_A RUN_B`): the accuracy
difference with a paired bootstrap interval, and McNemar's exact test on the images where exactly
one of them is right. This, not two headline numbers side by side, is what a search or a recipe
change should be judged by.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from facemask import run_folder
from facemask.config.schema import ConfigError
from facemask.evaluation.intervals import CONFIDENCE, RESAMPLES, SEED, resample_counts


def read_predictions(run_dir: Path, prefix: str) -> Dict[str, Tuple[str, str]]:
    """{image: (true label, predicted label)} of a run's <prefix>_predictions.csv."""
    path = run_folder.PREDICTIONS.path(run_dir, prefix)
    if not path.is_file() and (Path(run_dir) / run_folder.REPEAT_RESULTS_JSON).is_file():
        # evaluate.py cannot help here: a repeat's folder holds runs, not a model of its own.
        runs = sorted(p.name for p in Path(run_dir).iterdir() if run_folder.PREDICTIONS.path(p, prefix).is_file())
        example = (f"; e.g. python -m facemask compare {Path(run_dir) / runs[0]} OTHER_REPEAT/{runs[0]}"
                   if runs else "")
        raise ConfigError(f"{run_dir} is a repeat's summary folder: it holds no predictions of its own. Compare one of "
                          f"its runs ({', '.join(runs) or 'none has ' + path.name}) with a run on the same images"
                          f"{example}; its card ({run_folder.CARD.path(run_dir)}) gives the runs' mean and spread")
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: evaluate the split first (python evaluate.py {run_dir} ...)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    found = {row["file"]: (row["true_label"], row["predicted_label"]) for row in rows}
    if len(found) != len(rows):
        raise ConfigError(f"{path} names some images more than once: the rows cannot be paired")
    return found


def content_digest_of(run_dir: Path, prefix: str) -> Optional[str]:
    """The digest of the images a run's <prefix> predictions were made on (its intervals file, written
    with them), or None where it is not recorded (older runs, data.audit=false)."""
    path = run_folder.INTERVALS.path(run_dir, prefix)
    return run_folder.read_json(path).get("content_sha256") if path.is_file() else None


def paired_names(a: Path, b: Path, prefix: str, rows_a: Dict[str, Any],
                 rows_b: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(image in A, the same image in B), or a ConfigError when the runs did not predict the same images.
    Both recording the same image digest pairs rows by position: the same images, labels and order,
    wherever the data lies now (folds of a cross-validation share their test split). Digests that
    differ refuse, whatever the files are called. Without digests, rows pair by file name, and
    images held in memory (named by position) only when both runs read the same data with one seed."""
    digest_a, digest_b = content_digest_of(a, prefix), content_digest_of(b, prefix)
    if digest_a and digest_b:
        if digest_a != digest_b:
            raise ConfigError(f"the runs' {run_folder.split_name(prefix)} predictions are on different images: "
                              f"{run_folder.INTERVALS.path(a, prefix)} and {run_folder.INTERVALS.path(b, prefix)} "
                              f"record other image digests ({len(rows_a)} and {len(rows_b)} images; another seed "
                              "or data setting carves another split): compare needs the same images")
        pairs = list(zip(rows_a, rows_b))
        if len(rows_a) != len(rows_b):  # a predictions file replaced since: the digest no longer describes it
            raise ConfigError(f"{a} and {b} record the same images but their predictions files have {len(rows_a)} "
                              f"and {len(rows_b)} rows: evaluate the split again")
    else:
        _same_names(a, b, rows_a, rows_b)
        pairs = [(name, name) for name in sorted(rows_a)]
    relabelled = [name_a for name_a, name_b in pairs if rows_a[name_a][0] != rows_b[name_b][0]]
    if relabelled:
        raise ConfigError(f"{len(relabelled)} images have another true label in {b} than in {a} (e.g. "
                          f"{relabelled[0]}): not the same data")
    return pairs


def _same_names(a: Path, b: Path, rows_a: Dict[str, Any], rows_b: Dict[str, Any]) -> None:
    only_a, only_b = sorted(set(rows_a) - set(rows_b)), sorted(set(rows_b) - set(rows_a))
    if only_a or only_b:
        example = (only_a or only_b)[0]
        raise ConfigError(f"the runs were evaluated on different images ({len(only_a)} only in {a}, {len(only_b)} "
                          f"only in {b}, e.g. {example}): compare needs the same images")
    if all(name.isdigit() for name in rows_a):
        # Images held in memory (a drawn set) are named by position only: the data must be the same.
        info_a, info_b = (run_folder.read_json(run_folder.RUN_INFO.path(d)) for d in (a, b))
        same = info_a.get("data_fingerprint") and info_a.get("data_fingerprint") == info_b.get("data_fingerprint") \
            and info_a.get("seed") == info_b.get("seed")
        if not same:
            raise ConfigError("the images are held in memory (named by position, not by file): compare pairs them "
                              "only when both runs' run_info.json give the same data fingerprint and seed, or both "
                              "record the same image digest in their intervals file")


def compare_runs(a: str | Path, b: str | Path, split: str = "test", resamples: int = RESAMPLES,
                 seed: int = SEED, confidence: float = CONFIDENCE) -> Dict[str, Any]:
    from scipy.stats import binomtest

    a, b = Path(a), Path(b)
    prefix = run_folder.prefix_of(split)
    rows_a, rows_b = read_predictions(a, prefix), read_predictions(b, prefix)
    pairs = paired_names(a, b, prefix, rows_a, rows_b)
    names = [name_a for name_a, _ in pairs]
    labels = sorted({true for true, _ in rows_a.values()})
    label_ids = np.array([labels.index(rows_a[n][0]) for n in names])
    right_a = np.array([rows_a[n][0] == rows_a[n][1] for n in names])
    right_b = np.array([rows_b[n][0] == rows_b[n][1] for _, n in pairs])
    only_a, only_b = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    # Paired: each resample draws images, and both runs are scored on the same draw.
    gain = right_b.astype(np.float64) - right_a
    draws = np.concatenate([counts @ gain / len(names) for counts in resample_counts(label_ids, resamples, seed)])
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    # Runs of a repeat share folder names (seed-0 and seed-0): then the parent says which is which.
    name_a, name_b = a.name, b.name
    if name_a == name_b:
        name_a, name_b = f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}"
    return {
        "split": split, "images": len(names),
        "run_a": {"name": name_a, "accuracy": round(float(right_a.mean()), 6)},
        "run_b": {"name": name_b, "accuracy": round(float(right_b.mean()), 6)},
        "difference": {"b_minus_a": round(float(gain.mean()), 6), "low": round(float(low), 6),
                       "high": round(float(high), 6), "confidence": confidence,
                       "bootstrap": {"resamples": resamples, "seed": seed, "stratified_by": "true class",
                                     "paired": True}},
        "mcnemar": {"a_right_b_wrong": only_a, "a_wrong_b_right": only_b, "p_value": float(p_value),
                    "test": "exact (two-sided binomial test on the discordant images)"},
    }


def comparison_table(result: Dict[str, Any]) -> str:
    a, b, diff, mc = result["run_a"], result["run_b"], result["difference"], result["mcnemar"]
    pct = round(100 * diff["confidence"])
    return "\n".join([
        f"| {result['split']} ({result['images']} images) | A: {a['name']} | B: {b['name']} | "
        f"B - A ({pct}% interval) | McNemar exact p |",
        "|---|---:|---:|---|---:|",
        f"| accuracy | {a['accuracy']:.4f} | {b['accuracy']:.4f} | {diff['b_minus_a']:+.4f} "
        f"({diff['low']:+.4f} to {diff['high']:+.4f}) | {mc['p_value']:.4g} |",
        "",
        f"Images where only one run is right: {mc['a_right_b_wrong']} only A, {mc['a_wrong_b_right']} only B "
        f"(McNemar's test uses these alone).",
    ])
