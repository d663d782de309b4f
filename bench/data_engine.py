"""Flag, review, label, retrain, prove: does reviewing label-issues' ranking fix wrong labels, and
does `select` pick pool images that teach the model more than random ones? (issue #43, part 3)

    # a. review, on real photos and on the drawn set, seeds 0 1 2 (each step resumes from --work)
    .venv/bin/python bench/data_engine.py review --sources real drawn --seeds 0 1 2 --work /tmp/data-engine
    # the drawn set's arms at the config's 10 epochs, label-issues' folds at 5 (docs/benchmarks.md says why)
    .venv/bin/python bench/data_engine.py review --sources drawn --epochs 10 --fold-epochs 5 --work /tmp/de-10
    # b. selection: learning curves on the real photos' pool
    .venv/bin/python bench/data_engine.py select --strategies random margin clusters --seeds 0 --work /tmp/data-engine
    # c. the review page's cost per image (maps made ahead, a key 1-2 s later), on a label-issues output of a
    #    finished review step
    .venv/bin/python bench/data_engine.py cost --work /tmp/data-engine
    .venv/bin/python bench/data_engine.py review --tiny --work /tmp/de-tiny    # the code path (the slow test)

**a. Review.** Per source and seed: a training folder (real: FM12K dev's train/, 2,023 photos, as
symbolic links, never copied; drawn: --images of generator seed 0) with 10% of its files moved into
the other class's folder, a different draw per seed (bench/label_issues.py's flip; flips.json
records which). Every run uses configs/quickstart.yaml with training.num_train_epochs=--epochs
(the same in every arm; label-issues' folds too, unless --fold-epochs), training.seed=SEED, and a test folder that is
never noisy (data.test_dir: real: FM12K dev's validation/, 800 photos; drawn: --test-images of
generator seed 1). Then `label-issues --folds 3`, and a simulated truthful reviewer goes through its
output with the review page's own handler (curation/review.py's Review.act, maps off: the key
presses land in the journal, review.jsonl, in the page's order) and answers each image with its
true label (`keep` where that is the given one), up to 1x, 2x and 3x the number of moved labels;
corrections.csv and review_exclude.txt are copied aside at each budget. Arms, each one training run:
noisy; blind (data.exclude=label-issues' exclude.txt); true (the clean folder); reviewed-Kx
(data.corrections=corrections.csv, data.exclude=review_exclude.txt). Reported: moved labels among
the reviewed, fixed, and right labels changed (0 for a truthful reviewer); test accuracy per arm,
mean +- standard error (range) over seeds; `compare`'s McNemar p of each pair, per seed. The clean
case: label-issues on the clean folder, the same review at the 2x budget of 10% noise, retrained,
against the true arm (the same folder and seed) and blind exclusion.

**b. Selection.** Real photos: per seed, 200 of FM12K dev's train/ drawn at random are labelled
(a folder of links); the pool is the rest, as a flat folder of links whose names say nothing of the
class (labels known to the simulator only, by content digest). Each round trains (the config's
epochs, data.test_dir=validation/), runs `select RUN POOL --budget 200 --strategy S`, labels the
picks truthfully as corrections.csv rows (absolute file, digest, empty given_label, label), and
trains again with data.corrections, up to 1,600 labels. The first round (200) is shared by the
strategies. Reported: accuracy on validation/ per strategy and round, mean over seeds, and the
labels each strategy needs to reach random's mean accuracy at 1,600.

**c. Cost.** On a label-issues output: per image, the seconds Review.view takes (the page's next
image, its map from the fold model), with the key pressed at once and with a key 1-2 s (seeded)
after the image is shown; whether the next image's map was ready (made ahead) at the key press.

Nothing is tuned on the results. Results: bench/results/data-engine-{review,select,cost}.json and
the printed tables (.log beside them).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import run_accuracy, spread, timed, write_json  # noqa: E402
from bench.label_issues import draw, flip  # noqa: E402
from facemask.run_folder import (CORRECTIONS_CSV, EXCLUDE_LIST, LABEL_ISSUES_CSV, LABEL_ISSUES_JSON,  # noqa: E402
                                 RESULTS, REVIEW_EXCLUDE_LIST)

CONFIG = "configs/quickstart.yaml"
FM12K = REPO.parent / "shared" / "data" / "fm12k-dev"
RESULTS_DIR = REPO / "bench" / "results"
NOISE = 0.1
BUDGETS = (1, 2, 3)
CLEAN_BUDGET = 2
# End-of-training extras that do not change the test accuracy: left out of every arm alike.
QUIET = ["data.error_maps=none", "data.robustness=false", "data.shortcut_test=false", "hub.push=false"]
TINY = ["data.validation_split=0.2"]
# Pairs compared with `compare` (A, B): the issue's, and the clean case's.
PAIRS = [("noisy", "reviewed-2x"), ("true", "reviewed-2x"), ("blind", "reviewed-2x"), ("noisy", "true"),
         ("noisy", "blind"), ("noisy", "reviewed-1x"), ("noisy", "reviewed-3x"), ("true", "reviewed-3x"),
         ("true", "clean-reviewed-2x"), ("true", "clean-blind"), ("clean-blind", "clean-reviewed-2x")]


def linked(source: Path, folder: Path, files: Optional[List[Path]] = None, flat: bool = False) -> Path:
    """A folder of symbolic links to `source`'s images (all, or `files`), as class sub-folders, or
    flat with names that say nothing of the class; made once, under a temporary name."""
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for i, path in enumerate(sorted(files if files is not None else images_of(source))):
        link = partial / (f"{i:05d}{path.suffix}" if flat else path.relative_to(source))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path.resolve())
    partial.rename(folder)
    return folder


def images_of(folder: Path) -> List[Path]:
    found = sorted(p for p in folder.glob("*/*") if p.is_file())
    if not found:
        raise SystemExit(f"{folder} holds no images in class folders: give the real photos with --fm12k")
    return found


def digest(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def train(folder: Path, name: str, overrides: List[str], out: Path) -> float:
    """One training run into `out` (not run again once its test results exist); its test accuracy."""
    timed(name, [sys.executable, "train.py", CONFIG, f"training.output_dir={out.resolve()}", *QUIET, *overrides,
                 "--overwrite"], folder, RESULTS.path(out, "test").is_file())
    return run_accuracy(out)


def compare(a: Path, b: Path, out: Path) -> Dict[str, Any]:
    if not out.is_file():
        subprocess.run([sys.executable, "-m", "facemask", "compare", str(a), str(b), "--output", str(out)],
                       cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.read_text())


def simulate_review(found: Path, truth: Dict[str, str], budgets: Dict[int, Path]) -> Dict[int, Dict[str, int]]:
    """A truthful reviewer on label-issues' output `found`, through the review page's handler, in
    its order: each shown image answered with truth[file] (its true class), until budget images are
    reviewed; corrections.csv and review_exclude.txt copied into budgets[budget] at each budget.
    Returns, per budget, what the reviewed images were and what was changed."""
    from facemask.curation.journal import open_journal
    from facemask.curation.review import Review

    tallies: Dict[int, Dict[str, int]] = {}
    journal = open_journal(found)
    try:
        page = Review(journal, method="none")
        for budget in sorted(budgets):
            snapshot = budgets[budget]
            while journal.counts()["reviewed"] < budget and (item := journal.current()) is not None:
                true = truth[item.file]
                page.act(item.sha256, "keep" if true == item.given_label else f"label:{true}")
            # The first `budget` reviewed: a resumed journal may already hold a larger budget's decisions.
            decided = [d for d in journal.standing if d.decision in ("label", "keep", "exclude")][:budget]
            tallies[budget] = {
                "reviewed": len(decided),
                "moved_reviewed": sum(truth[d.file] != d.given_label for d in decided),
                "moved_fixed": sum(truth[d.file] != d.given_label and d.label == truth[d.file] for d in decided),
                "right_changed": sum(truth[d.file] == d.given_label and d.label != d.given_label for d in decided),
                "excluded": sum(d.decision == "exclude" for d in decided)}
            if not (snapshot / CORRECTIONS_CSV).is_file():
                partial = snapshot.with_name(snapshot.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                partial.mkdir(parents=True)
                for name in (CORRECTIONS_CSV, REVIEW_EXCLUDE_LIST):
                    shutil.copy2(found / name, partial / name)
                shutil.rmtree(snapshot, ignore_errors=True)
                partial.rename(snapshot)
    finally:
        journal.close()
    return tallies


def label_issues(folder: Path, name: str, data: List[str], out: Path, folds: int) -> Dict[str, Any]:
    timed(name, [sys.executable, "-m", "facemask", "label-issues", CONFIG, "--folds", str(folds), *data, *QUIET,
                 f"training.output_dir={out.resolve()}"], folder, (out / LABEL_ISSUES_JSON).is_file())
    with (out / LABEL_ISSUES_CSV).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    info = json.loads((out / LABEL_ISSUES_JSON).read_text())
    return {"listed": len(rows), "flagged": sum(r["is_issue"] == "True" for r in rows),
            "ranked": [r["file"] for r in rows],
            "fold_accuracy": list(info["fold_accuracy"].values())}


def review_seed(args: argparse.Namespace, source: str, clean: Path, test: Path, seed: int) -> Dict[str, Any]:
    folder = Path(args.work) / source / f"seed-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    noisy = folder / "noisy-train"
    moved = flip(clean, noisy, NOISE, seed)
    moved_set = set(moved)
    files = sorted(str(p.relative_to(noisy)) for p in noisy.glob("*/*"))
    truth = {f: (Path(f).parent.name if f not in moved_set else
                 next(c.name for c in clean.iterdir() if c.is_dir() and c.name != Path(f).parent.name))
             for f in files}
    common = [f"training.seed={seed}", "data.synthetic=false", f"data.test_dir={test.resolve()}", *args.set]
    folds = [*common, f"training.num_train_epochs={args.fold_epochs or args.epochs}"]
    common = [*common, f"training.num_train_epochs={args.epochs}"]
    print(f"\n{source}, seed {seed}: {len(moved)} of {len(files)} labels moved", flush=True)
    result: Dict[str, Any] = {"source": source, "seed": seed, "images": len(files), "moved": len(moved)}
    found = label_issues(folder, "label-issues", [f"data.train_dir={noisy.resolve()}", *folds],
                         folder / "label-issues", args.folds)
    ranked = found.pop("ranked")
    found["moved_in_first"] = {f"{k}x": sum(f in moved_set for f in ranked[:k * len(moved)]) for k in BUDGETS}
    found["flagged_moved"] = None  # filled below from the csv
    with (folder / "label-issues" / LABEL_ISSUES_CSV).open(newline="", encoding="utf-8") as f:
        found["flagged_moved"] = sum(r["is_issue"] == "True" and r["file"] in moved_set for r in csv.DictReader(f))
    result["label_issues"] = found
    budgets = {k * len(moved): folder / f"review-{k}x" for k in BUDGETS}
    tallies = simulate_review(folder / "label-issues", truth, budgets)
    result["review"] = {f"{k}x": tallies[k * len(moved)] for k in BUDGETS}
    arms = {"noisy": [f"data.train_dir={noisy.resolve()}"],
            "blind": [f"data.train_dir={noisy.resolve()}",
                      f"data.exclude={(folder / 'label-issues' / EXCLUDE_LIST).resolve()}"],
            "true": [f"data.train_dir={clean.resolve()}"]}
    for k in BUDGETS:
        snap = folder / f"review-{k}x"
        arms[f"reviewed-{k}x"] = [f"data.train_dir={noisy.resolve()}",
                                  f"data.corrections={(snap / CORRECTIONS_CSV).resolve()}",
                                  f"data.exclude={(snap / REVIEW_EXCLUDE_LIST).resolve()}"]
    result["accuracy"] = {}
    for arm in args.arms:
        if arm in arms:
            result["accuracy"][arm] = train(folder, arm, [*common, *arms[arm]], folder / arm)
            print(f"  {arm}: test accuracy {result['accuracy'][arm]:.4f}", flush=True)
    if args.clean_case:
        # The clean case: what the same review and retraining cost where no label is wrong.
        truth_clean = {str(p.relative_to(clean)): p.parent.name for p in images_of(clean)}
        clean_data = [f"data.train_dir={clean.resolve()}", *common]
        result["clean_label_issues"] = {k: v for k, v in label_issues(
            folder, "clean-label-issues", [f"data.train_dir={clean.resolve()}", *folds], folder / "clean-label-issues",
            args.folds).items() if k != "ranked"}
        budget = CLEAN_BUDGET * len(moved)
        snap = folder / f"clean-review-{CLEAN_BUDGET}x"
        result["clean_review"] = simulate_review(folder / "clean-label-issues", truth_clean, {budget: snap})[budget]
        for arm, extra in {"clean-blind": [f"data.exclude={(folder / 'clean-label-issues' / EXCLUDE_LIST).resolve()}"],
                           f"clean-reviewed-{CLEAN_BUDGET}x": [
                               f"data.corrections={(snap / CORRECTIONS_CSV).resolve()}",
                               f"data.exclude={(snap / REVIEW_EXCLUDE_LIST).resolve()}"]}.items():
            result["accuracy"][arm] = train(folder, arm, [*clean_data, *extra], folder / arm)
            print(f"  {arm}: test accuracy {result['accuracy'][arm]:.4f}", flush=True)
    result["compare"] = {}
    for a, b in PAIRS:
        if a in result["accuracy"] and b in result["accuracy"]:
            c = compare(folder / a, folder / b, folder / f"compare-{a}-vs-{b}.json")
            result["compare"][f"{b} vs {a}"] = {"b_minus_a": c["difference"]["b_minus_a"],
                                                "low": c["difference"]["low"], "high": c["difference"]["high"],
                                                "mcnemar_p": c["mcnemar"]["p_value"]}
    steps = json.loads((folder / "steps.json").read_text())
    result["cost"] = steps
    return result


def sources(args: argparse.Namespace) -> Dict[str, Tuple[Path, Path]]:
    work = Path(args.work)
    found = {}
    for source in args.sources:
        if source == "real":
            found[source] = (linked(Path(args.fm12k) / "train", work / "real" / "clean-train"),
                             Path(args.fm12k) / "validation")
        else:
            found[source] = (draw(work / "drawn" / "clean-train", args.images, seed=0),
                             draw(work / "drawn" / "test", args.test_images, seed=1))
    return found


def summary(values: List[float]) -> Dict[str, Any]:
    from facemask.training.repeat import summarise

    return summarise([{"v": v} for v in values])["v"]


def report_review(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    table: Dict[str, Any] = {}
    for source in dict.fromkeys(r["source"] for r in results):
        rows = [r for r in results if r["source"] == source]
        seeds = [r["seed"] for r in rows]
        print(f"\n## {source}: seeds {seeds}; {rows[0]['images']} training images, {rows[0]['moved']} labels moved")
        print("\n| seed | flagged | moved among flagged | moved in first 1x / 2x / 3x ranked | fold accuracy |")
        print("|---:|---:|---:|---:|---:|")
        for r in rows:
            li = r["label_issues"]
            print(f"| {r['seed']} | {li['flagged']} | {li['flagged_moved']} | "
                  f"{' / '.join(str(v) for v in li['moved_in_first'].values())} | "
                  f"{min(li['fold_accuracy']):.3f}-{max(li['fold_accuracy']):.3f} |")
        print("\n| budget | reviewed | moved among them | moved labels fixed | right labels changed |")
        print("|---|---:|---:|---:|---:|")
        for k in [f"{b}x" for b in BUDGETS]:
            t = [r["review"][k] for r in rows]
            print(f"| {k} | {'/'.join(str(x['reviewed']) for x in t)} | "
                  f"{'/'.join(str(x['moved_reviewed']) for x in t)} | {'/'.join(str(x['moved_fixed']) for x in t)} "
                  f"| {'/'.join(str(x['right_changed']) for x in t)} |")
        clean = [r["clean_review"] for r in rows if "clean_review" in r]
        if clean:
            print(f"| clean labels, {CLEAN_BUDGET}x | {'/'.join(str(x['reviewed']) for x in clean)} | 0 | 0 | "
                  f"{'/'.join(str(x['right_changed']) for x in clean)} |")
        arms = list(dict.fromkeys(a for r in rows for a in r["accuracy"]))
        print("\n| arm | test accuracy, mean ± standard error (range) | per seed |")
        print("|---|---:|---|")
        accuracy = {}
        for arm in arms:
            values = [r["accuracy"][arm] for r in rows if arm in r["accuracy"]]
            accuracy[arm] = {"values": values, "summary": summary(values)}
            print(f"| {arm} | {spread(accuracy[arm]['summary'])} | {' '.join(f'{v:.4f}' for v in values)} |")
        # McNemar tests two trained models on the same test images; a second training of the same
        # arm differs too, so the paired differences' spread over seeds is the figure to weigh it by.
        print("\n| pair (B vs A) | B - A, mean over seeds ± standard error | B - A per seed | McNemar p per seed |")
        print("|---|---:|---|---|")
        pairs = list(dict.fromkeys(p for r in rows for p in r["compare"]))
        paired_by_seed = {}
        for p in pairs:
            got = [r["compare"][p] for r in rows if p in r["compare"]]
            paired_by_seed[p] = summary([g["b_minus_a"] for g in got])
            differences = " ".join(f"{g['b_minus_a']:+.4f}" for g in got)
            d = paired_by_seed[p]
            se = f"{d['se']:.4f}" if d.get("se") is not None else "n/a"
            print(f"| {p} | {d['mean']:+.4f} ± {se} ({d['min']:+.4f} to {d['max']:+.4f}) | {differences} | "
                  f"{' '.join(format(g['mcnemar_p'], '.2g') for g in got)} |")
        table[source] = {"seeds": seeds, "accuracy": accuracy, "paired": paired_by_seed}
    return table


def review_command(args: argparse.Namespace) -> None:
    if args.tiny:
        args.images, args.test_images, args.folds, args.seeds, args.epochs = 80, 40, 2, args.seeds[:1], 1
        args.sources, args.set = ["drawn"], [*TINY, *args.set]
    out = Path(args.output)
    if args.report_only:
        written = json.loads(out.read_text())
        written["tables"] = report_review(written["results"])
        write_json(out, written)
        return
    results = []
    found = sources(args)
    for source in args.sources:
        for seed in args.seeds:
            results.append(review_seed(args, source, *found[source], seed))
            # Written after every seed, so a stopped run leaves what it finished.
            write_json(out, {"epochs": args.epochs, "fold_epochs": args.fold_epochs or args.epochs, "folds": args.folds,
                             "noise": NOISE, "results": results})
    tables = report_review(results)
    write_json(out, {"epochs": args.epochs, "fold_epochs": args.fold_epochs or args.epochs, "folds": args.folds,
                     "noise": NOISE, "results": results, "tables": tables})


def select_curve(args: argparse.Namespace, seed: int, strategy: str, start: Path, labelled0: List[Path],
                 truth: Dict[str, str], everything: List[Path], test: Path, folder: Path) -> Dict[int, float]:
    """One learning curve: rounds of training, select and truthful labelling; accuracy per size."""
    from facemask.data.corrections import Correction, write_corrections

    common = [f"training.seed={seed}", "data.synthetic=false", f"data.train_dir={start.resolve()}",
              f"data.test_dir={test.resolve()}", *args.set]
    curve = {}
    first = folder / "round-0200"
    curve[len(labelled0)] = train(folder, "round-0200", common, first)
    labelled = {digest(p) for p in labelled0}
    picked: List[Path] = []
    run = first
    for size in range(len(labelled0) + args.step, args.max_labels + 1, args.step):
        here = folder / strategy / f"round-{size:04d}"
        here.mkdir(parents=True, exist_ok=True)
        corrections = here / CORRECTIONS_CSV
        if not corrections.is_file():
            # The pool: every image not yet labelled, as anonymous links (the simulator alone knows the classes).
            pool = linked(Path("/"), here / "pool", [p for p in everything if digest(p) not in labelled
                                                      and p not in picked], flat=True)
            chosen = here / "select"
            timed("select", [sys.executable, "-m", "facemask", "select", str(run), str(pool), "--budget",
                             str(args.step), "--strategy", strategy, "--seed", str(seed), "--output", str(chosen),
                             "--force"], here, (chosen / "to_label.csv").is_file())
            with (chosen / "to_label.csv").open(newline="", encoding="utf-8") as f:
                new = [Path(r["file"]).resolve() for r in csv.DictReader(f)]
            previous = folder / strategy / f"round-{size - args.step:04d}" / CORRECTIONS_CSV
            rows = []
            if previous.is_file():
                with previous.open(newline="", encoding="utf-8") as f:
                    rows = [Correction(0, r["file"], r["sha256"], None, r["label"]) for r in csv.DictReader(f)]
            rows += [Correction(0, str(p), digest(p), None, truth[digest(p)]) for p in new]
            write_corrections(corrections, rows)
            shutil.rmtree(here / "pool", ignore_errors=True)
        with corrections.open(newline="", encoding="utf-8") as f:
            rows_now = list(csv.DictReader(f))
        picked = [Path(r["file"]) for r in rows_now]
        labelled = {digest(p) for p in labelled0} | {r["sha256"] for r in rows_now}
        run = here / "run"
        curve[size] = train(here, "train", [*common, f"data.corrections={corrections.resolve()}"], run)
        print(f"  seed {seed} {strategy} {size} labels: {curve[size]:.4f}", flush=True)
    return curve


def select_command(args: argparse.Namespace) -> None:
    work = Path(args.work) / "select"
    source = Path(args.fm12k) / "train"
    everything = [p.resolve() for p in images_of(source)]
    truth = {digest(p): p.parent.name for p in everything}
    out = Path(args.output)
    if args.report_only:
        results = json.loads(out.read_text())
        report_select(results)
        write_json(out, results)
        return
    for seed in args.seeds:
        folder = work / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        labelled0 = sorted(random.Random(f"data-engine-select:{seed}").sample(everything, args.start))
        start = linked(source, folder / "start", labelled0)
        for strategy in args.strategies:
            curve = select_curve(args, seed, strategy, start, labelled0, truth, everything,
                                 Path(args.fm12k) / "validation", folder)
            # Read again just before writing: another process may run other seeds into the same file.
            results = json.loads(out.read_text()) if out.is_file() else {}
            results.setdefault("curves", {}).setdefault(strategy, {})[str(seed)] = {str(k): v for k, v in curve.items()}
            write_json(out, results)
    report_select(results)
    write_json(out, results)


def report_select(results: Dict[str, Any]) -> None:
    curves = results["curves"]
    sizes = sorted({int(k) for c in curves.values() for s in c.values() for k in s})
    print("\nValidation accuracy (FM12K dev validation/, 800 photos), mean over the seeds run (seeds in brackets)")
    print("\n| labels | " + " | ".join(curves) + " |")
    print("|---:|" + "---:|" * len(curves))
    means: Dict[str, Dict[int, float]] = {}
    for size in sizes:
        cells = []
        for strategy, by_seed in curves.items():
            values = [c[str(size)] for c in by_seed.values() if str(size) in c]
            if values:
                means.setdefault(strategy, {})[size] = statistics.fmean(values)
                cells.append(f"{statistics.fmean(values):.4f} [{len(values)}]")
            else:
                cells.append("not run")
        print(f"| {size} | " + " | ".join(cells) + " |")
    top = max(sizes) if sizes else None
    if "random" in means and top in means["random"]:
        target = means["random"][top]
        print(f"\nLabels needed to reach random's mean at {top} ({target:.4f}):")
        for strategy, m in means.items():
            reached = next((s for s in sorted(m) if m[s] >= target), None)
            print(f"  {strategy}: {reached if reached is not None else f'not reached within {max(m)}'}")
        per_seed = {}
        for seed, curve in curves["random"].items():
            if str(top) not in curve:
                continue
            aim = curve[str(top)]
            per_seed[seed] = {s: next((k for k in sorted(int(x) for x in c[seed]) if c[seed][str(k)] >= aim), None)
                              for s, c in curves.items() if seed in c}
            print(f"  seed {seed} (random at {top}: {aim:.4f}): " + ", ".join(
                f"{s} {v if v is not None else 'not reached'}" for s, v in per_seed[seed].items()))
        results["per_seed_labels_needed"] = per_seed
        results["target"] = {"random_at": top, "accuracy": target,
                             "labels_needed": {s: next((k for k in sorted(m) if m[k] >= target), None)
                                               for s, m in means.items()}}


def cost_command(args: argparse.Namespace) -> None:
    """The page's added seconds per reviewed image, on a copy of a finished label-issues output."""
    from facemask.curation.journal import open_journal
    from facemask.curation.review import Review

    found = Path(args.work) / args.cost_source / f"seed-{args.seeds[0]}" / "label-issues"
    copy = Path(args.work) / "cost" / "label-issues"
    shutil.rmtree(copy, ignore_errors=True)
    copy.parent.mkdir(parents=True, exist_ok=True)
    # The journal's files only: the fold models and lists are read from the copy, never written.
    shutil.copytree(found, copy, ignore=shutil.ignore_patterns("review.jsonl", CORRECTIONS_CSV, REVIEW_EXCLUDE_LIST))
    rng = random.Random("data-engine-cost")
    figures: Dict[str, Any] = {}
    for pause in ("none", "1-2 s"):
        journal = open_journal(copy)
        try:
            page = Review(journal, method=args.method)
            start = time.perf_counter()
            first = page.view()
            figures.setdefault("first_view_s", time.perf_counter() - start)
            shown, views, ready = first[4], [], []
            for _ in range(args.cost_images):
                if pause != "none":
                    time.sleep(rng.uniform(1.0, 2.0))
                upcoming = page._upcoming(2)
                ready.append(len(upcoming) > 1 and page.maps._done.get(upcoming[1].sha256) is not None
                             and page.maps._done[upcoming[1].sha256].done())
                item = upcoming[0]
                start = time.perf_counter()
                shown = page.act(shown, "keep" if item.given_label else "skip")[4]
                views.append(time.perf_counter() - start)
        finally:
            journal.close()
        (copy / "review.jsonl").unlink(missing_ok=True)
        figures[pause] = {"images": len(views), "seconds_per_image": {"median": statistics.median(views),
                                                                      "min": min(views), "max": max(views),
                                                                      "mean": statistics.fmean(views)},
                          "next_map_ready_at_key": sum(ready), "of": len(ready)}
        print(f"key {pause} after the image: {statistics.median(views):.3f} s per image (median; "
              f"{min(views):.3f}-{max(views):.3f}), next map ready at the key {sum(ready)}/{len(ready)}", flush=True)
    write_json(args.output, {"source": args.cost_source, "method": args.method, "cpus": os.cpu_count(), **figures})


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["review", "select", "cost"])
    parser.add_argument("--sources", nargs="+", choices=["real", "drawn"], default=["real", "drawn"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["noisy", "blind", "true", "reviewed-1x", "reviewed-2x",
                                                       "reviewed-3x"])
    parser.add_argument("--no-clean-case", dest="clean_case", action="store_false")
    parser.add_argument("--epochs", type=int, default=5, help="every review arm's and label-issues' folds' epochs")
    parser.add_argument("--fold-epochs", type=int, help="label-issues' folds' epochs, where not --epochs")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000, help="drawn training images")
    parser.add_argument("--test-images", type=int, default=1000, help="drawn test images")
    parser.add_argument("--strategies", nargs="+", default=["random", "margin", "clusters"])
    parser.add_argument("--start", type=int, default=200)
    parser.add_argument("--step", type=int, default=200)
    parser.add_argument("--max-labels", type=int, default=1600)
    parser.add_argument("--method", default="ablation", help="cost: the page's map method")
    parser.add_argument("--cost-source", default="real")
    parser.add_argument("--cost-images", type=int, default=20)
    parser.add_argument("--fm12k", default=str(FM12K))
    parser.add_argument("--work", default="/tmp/data-engine")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run")
    parser.add_argument("--output", help="the JSON written (default bench/results/data-engine-PART.json)")
    parser.add_argument("--report-only", action="store_true", help="review, select: print the tables of --output "
                                                                  "as written, running nothing")
    parser.add_argument("--tiny", action="store_true", help="review: the code path, 80 + 40 drawn images, 1 epoch")
    args = parser.parse_args(argv)
    args.output = args.output or str(RESULTS_DIR / f"data-engine-{args.part}.json")
    {"review": review_command, "select": select_command, "cost": cost_command}[args.part](args)


if __name__ == "__main__":
    main()
