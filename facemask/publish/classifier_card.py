"""A fine-tuned classifier's card (template.md.j2, and architectures/ for the model family's
title, description and citation): what it classifies, its data, training, metrics and diagnostics,
from the run folder's files (publish/card.py picks the kind of card)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional

import jinja2
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from facemask import CARD_TEMPLATES
from facemask.publish.naming import hub_model_id, model_name
from facemask.publish.public import local_folders, public_text
from facemask.run_folder import RunFiles, split_name

TEMPLATE = CARD_TEMPLATES / "template.md.j2"
NOT_RECORDED = "not recorded"

METRICS = {"accuracy": "Accuracy", "f1": "F1", "precision": "Precision", "recall": "Recall", "roc_auc": "ROC-AUC"}


HYPERPARAMETERS = [
    "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "optim", "seed", "bf16",
    "fp16", "load_best_model_at_end", "metric_for_best_model",
]


def metrics_block(split: str, metrics: Dict[str, Any]) -> str:
    """The block `Trainer.log_metrics` prints for these metrics, line for line."""
    from transformers.trainer_pt_utils import metrics_format

    formatted = metrics_format(metrics)
    k_width = max(len(str(k)) for k in formatted)
    v_width = max(len(str(v)) for v in formatted.values())
    lines = [f"***** {split} metrics *****"]
    lines += [f"  {key: <{k_width}} = {formatted[key]:>{v_width}}" for key in sorted(formatted)]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _dataset(run: RunFiles) -> Dict[str, Optional[str]]:
    data = run.experiment.get("data") or {}
    if data.get("dataset_name"):
        name = data["dataset_name"] + (f" ({data['dataset_config']})" if data.get("dataset_config") else "")
        return {"type": data["dataset_name"], "name": name, "hub_id": data["dataset_name"]}
    if data.get("train_dir"):
        return {"type": "imagefolder", "name": Path(data["train_dir"]).name or data["train_dir"], "hub_id": None}
    if data.get("synthetic"):
        seed = (run.experiment.get("training") or {}).get("seed", 42)
        return {"type": "synthetic-face-mask", "name": f"synthetic face-mask images (seed {seed})", "hub_id": None}
    return {"type": "unknown", "name": NOT_RECORDED, "hub_id": None}


def _split_dataset(run: RunFiles, prefix: str, training: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    """The dataset a split's results were measured on: its own source where the run recorded one
    (data.validation_dir, data.test_dir, data.extra_test), or the source evaluate.py named when it
    added the split from other data; otherwise the training data (its own splits, or carved)."""
    recorded = ((run.run_info.get("data") or {}).get("split_sources") or {}).get(split_name(prefix))
    evaluated = (run.intervals.get(prefix) or {}).get("source")
    if evaluated and (not recorded or recorded.get("name") != evaluated):
        return {"type": evaluated, "name": evaluated}  # a public name (no path), all that was recorded
    return {"type": recorded["type"], "name": recorded["name"]} if recorded else training


def _other_sources(run: RunFiles, training: Dict[str, Optional[str]]) -> List[Dict[str, Optional[str]]]:
    """The evaluated splits measured on data from another source than training's, with its name."""
    found = {prefix: _split_dataset(run, prefix, training) for prefix in run.results if prefix != "train"}
    return [{"split": split_name(prefix), "name": d["name"]} for prefix, d in found.items() if d is not training]


def _looks_like_hub_id(name: str) -> bool:
    """owner/name, and not a path here: the Hub's model id form."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _base_model(run: RunFiles) -> tuple[Optional[str], Optional[str]]:
    """(the Hub id the weights started from, or the name of the local checkpoint folder they did).
    run_info.json decided it where the source was at hand; a run that did not record it is judged
    by the config's string alone."""
    if "base_model" in run.run_info:
        record = run.run_info["base_model"] or {}
        return record.get("hub_id"), record.get("local_folder")
    name = (run.experiment.get("model") or {}).get("name_or_path")
    if not name:
        return None, None
    return (name, None) if _looks_like_hub_id(name) else (None, Path(name).expanduser().resolve().name)


def _pretraining(run: RunFiles) -> Optional[Dict[str, Any]]:
    """The Pretraining line's facts (run_info.json's base_model, recorded where the run was at hand)."""
    record = run.run_info.get("base_model") or {}
    pretraining = record.get("pretraining")
    if not pretraining:
        return None
    ratio = pretraining.get("mask_ratio")
    return {"run": record.get("hub_id") or record.get("local_folder"), "objective": pretraining.get("objective"),
            "masked": f"{ratio:.0%}" if isinstance(ratio, (int, float)) else NOT_RECORDED,
            "images": sum((pretraining.get("images") or {}).values()), "data": pretraining.get("data"),
            "started_from": pretraining.get("started_from")}


def card_data(run: RunFiles, model_id: Optional[str] = None) -> ModelCardData:
    card = run.experiment.get("card") or {}
    dataset = _dataset(run)
    model_type = run.model_config.get("model_type")
    tags = ["image-classification", "vision"] + ([model_type] if model_type else []) + ["face-mask"]
    tags += [t for t in card.get("tags") or [] if t not in tags]
    results = []
    for prefix, metrics in run.results.items():
        if prefix == "train":
            continue
        measured_on = _split_dataset(run, prefix, dataset)
        for metric, label in METRICS.items():
            if f"{prefix}_{metric}" in metrics:
                results.append(EvalResult(
                    task_type="image-classification", task_name="Image Classification",
                    dataset_type=measured_on["type"], dataset_name=measured_on["name"],
                    dataset_split=split_name(prefix),
                    metric_type=metric, metric_name=label, metric_value=metrics[f"{prefix}_{metric}"],
                ))
    return ModelCardData(
        model_name=model_name(run, model_id),
        license=card.get("license", "apache-2.0"),
        language=card.get("language"),
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=tags,
        base_model=_base_model(run)[0],
        datasets=[dataset["hub_id"]] if dataset["hub_id"] else None,
        metrics=list(METRICS),
        eval_results=results or None,
    )


def _hyperparameters(run: RunFiles) -> List[Dict[str, Any]]:
    training = run.experiment.get("training")
    if not training:
        return []
    from transformers import TrainingArguments

    defaults = {f.name: f.default for f in dataclasses.fields(TrainingArguments) if f.default is not dataclasses.MISSING}
    rows = []
    for key in HYPERPARAMETERS:
        value = training.get(key, defaults.get(key))
        if key == "max_steps" and (value is None or value <= 0):
            continue
        rows.append({"name": key, "value": value, "default": key not in training})
    if run.run_info.get("effective_batch_size"):
        # Recorded by the run (training.effective_batch_size), right in every launch mode.
        rows.append({"name": "total_train_batch_size", "value": run.run_info["effective_batch_size"],
                     "default": False})
    if training.get("label_smoothing_factor"):
        rows.append({"name": "label_smoothing_factor", "value": training["label_smoothing_factor"], "default": False})
    from facemask.recipe.build import changed_settings

    for key, value in changed_settings(run.experiment.get("recipe") or {}).items():
        rows.append({"name": f"recipe.{key}", "value": value, "default": False})
    for key, value in ((run.experiment.get("model") or {}).get("config_overrides") or {}).items():
        rows.append({"name": f"model.config_overrides.{key}", "value": value, "default": False})
    return rows


def _peft(run: RunFiles) -> Optional[Dict[str, Any]]:
    """model.peft as the card states it: LoRA's settings, what was trained and the adapter's size."""
    record = run.run_info.get("peft")
    if not record:
        return None
    from facemask.data.storage import human_bytes

    return {**record, "method": {"lora": "LoRA"}.get(record["method"], record["method"]),
            "share": f"{100 * record['trainable_share']:.2f}%",
            "adapter_size": None if run.adapter_bytes is None else human_bytes(run.adapter_bytes)
            if run.adapter_bytes >= 1e6 else f"{run.adapter_bytes / 1e3:.1f} kB"}


def _distill(run: RunFiles) -> Optional[Dict[str, Any]]:
    """recipe.distill: the teacher by name, and its accuracy beside this model's on the same splits."""
    teacher = run.teacher
    if not teacher:
        return None
    rows = []
    held_out = teacher.get("held_out")  # absent from runs before it was checked: nothing to mark
    as_used = teacher.get("results_as_used")  # recorded since #33: older runs scored it at its own resolution only
    for prefix, metrics in (teacher.get("results") or {}).items():
        own = run.results.get(prefix) or {}
        held = True if held_out is None else held_out.get(prefix)
        rows.append({"split": split_name(prefix), "teacher": metrics.get(f"{prefix}_accuracy"),
                     "as_used": (as_used or {}).get(prefix, {}).get(f"{prefix}_accuracy"),
                     "student": own.get(f"{prefix}_accuracy"),
                     "not_held_out": None if held else "trained on by the teacher" if held is False
                     else "not shown to be held out from the teacher's training"})
    student, side = teacher.get("student_side"), teacher.get("teacher_side")
    resized = "" if student == side else " upsampled" if student < side else " downsampled"
    return {**teacher, "rows": rows, "as_used": as_used is not None, "resized": resized}


def _early_stopping(run: RunFiles) -> Optional[str]:
    recipe = run.experiment.get("recipe") or {}
    patience = recipe.get("early_stopping_patience")
    if not patience:
        return None
    metric = (run.experiment.get("training") or {}).get("metric_for_best_model") or "loss"
    rule = (f"validation {metric} did not improve by more than {recipe.get('early_stopping_threshold', 0.0)} "
            f"for {patience} evaluation(s)")
    train = run.results.get("train") or {}
    if "early_stopped_at_step" in train:
        return (f"stopped at epoch {train['early_stopped_at_epoch']} (step {train['early_stopped_at_step']}): "
                f"{rule}")
    return f"on (stop when {rule}); it did not trigger"


def _selection(run: RunFiles) -> Optional[str]:
    """Which split chose the checkpoint, so a reader knows which numbers are untouched by it."""
    training = run.experiment.get("training")
    if not training:
        return None
    if not training.get("load_best_model_at_end"):
        return "the last checkpoint (no selection on any split)"
    metric = training.get("metric_for_best_model") or "loss"
    clean = " The test split chose nothing." if "test" in run.results else ""
    average = " (its exponential moving average of the weights)" if (run.experiment.get("recipe") or {}).get(
        "ema_decay") else ""
    return (f"the checkpoint with the best validation {metric}{average}, so validation numbers are "
            f"optimistic.{clean}")


def _augmentation(run: RunFiles) -> Optional[str]:
    data = run.experiment.get("data")
    if not data:
        return None
    if not data.get("augment", True):
        return "none"
    return (f"random resized crop (scale {data.get('crop_scale')}, ratio "
            f"{[round(r, 4) for r in data.get('crop_ratio') or []]}), horizontal flip (p={data.get('hflip_prob')})")


def _architecture(model_type: Optional[str]) -> Any:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(CARD_TEMPLATES / "architectures")),
                             keep_trailing_newline=False)
    name = f"{model_type}.md.j2" if model_type and (CARD_TEMPLATES / "architectures" / f"{model_type}.md.j2").is_file() \
        else "default.md.j2"
    return env.get_template(name)


SLICE_MARGIN = 0.05  # slices whose accuracy differs from their split's by more than this are shown
SLICE_MIN_IMAGES = 20


def _diagnostics(run: RunFiles, figures: Dict[str, str]) -> Dict[str, Any]:
    """The card's shortcut, slice, error and calibration sections, from evaluation/analysis.py's files."""
    from facemask.evaluation.slices import notable_slices

    report = run.audit_report
    return {
        "audited": bool(report),
        "partial_shortcuts": report.get("partial_shortcuts", []),
        "attribute_shortcuts": report.get("shortcuts", []),
        "shortcut_rule": report.get("partial_shortcut_rule"),
        "shortcut_tests": [{"split": split_name(prefix), **payload} for prefix, payload in run.shortcut_tests.items()],
        "slices": [{"split": split_name(prefix), "rows": notable_slices(s, SLICE_MARGIN, SLICE_MIN_IMAGES),
                    "overall": s["overall"]["accuracy"]} for prefix, s in run.slices.items()],
        "slice_margin": SLICE_MARGIN, "slice_min_images": SLICE_MIN_IMAGES,
        "errors": [{"split": split_name(prefix), "figure": figures.get(f"errors_{prefix}"), **payload}
                   for prefix, payload in run.errors.items()],
        "calibration": [{"split": split_name(prefix), "ece": c["ece"], "images": c["images"],
                         "figure": figures.get(f"calibration_{prefix}")} for prefix, c in run.calibration.items()],
        "operating_points": run.operating_points or None,
        "robustness": [_robustness(prefix, record, figures) for prefix, record in run.robustness.items()],
    }


def _robustness(prefix: str, record: Dict[str, Any], figures: Dict[str, str]) -> Dict[str, Any]:
    """The card's robustness table: a row per corruption, a column per severity, its mean and its
    drop from the clean accuracy of the same images."""
    clean = record["clean_accuracy"]
    rows = []
    for name, cells in record["corruptions"].items():
        mean = record["corruption_means"][name]
        rows.append({"name": name.replace("_", " "), "cells": [cells[str(s)]["accuracy"] for s in range(1, 6)],
                     "mean": mean, "drop": 100 * (clean - mean)})
    worst = next(row for row in rows if row["name"] == record["worst_corruption"].replace("_", " "))
    return {"split": split_name(prefix), "record": record, "rows": rows, "worst": worst,
            "occlusion": record.get("occlusion") or {}, "figure": figures.get(f"robustness_{prefix}"),
            "occlusion_figure": figures.get(f"occlusion_{prefix}")}


def render_card(run: RunFiles, figures: Dict[str, str], model_id: Optional[str] = None) -> str:
    """The card's markdown; `figures` are the PNGs present beside it (see write_figures)."""
    model_id = hub_model_id(run, model_id)
    data = card_data(run, model_id)
    config = run.model_config
    architecture = _architecture(config.get("model_type")).module
    base_model, local_base = _base_model(run)
    info_data = run.run_info.get("data") or {}
    labels = info_data.get("labels") or [config["id2label"][k] for k in sorted(config.get("id2label") or {}, key=int)]
    splits = info_data.get("splits") or {}
    arch_vars = {"config": config, "base_model": base_model, "local_base": local_base}
    dataset = _dataset(run)
    content = ModelCard.from_template(
        data,
        template_path=str(TEMPLATE),
        title=architecture.title(**arch_vars).strip(),
        description=architecture.description(**arch_vars).strip(),
        citation=architecture.citation(**arch_vars).strip(),
        not_recorded=NOT_RECORDED,
        model_ref=model_id or "path/to/" + model_name(run, None),
        hub_model_id=model_id,
        dataset=dataset,
        other_sources=_other_sources(run, dataset),
        image_size=config.get("image_size"),
        labels=labels,
        splits=splits,
        exclude=info_data.get("exclude"),
        corrections=info_data.get("corrections"),
        hyperparameters=_hyperparameters(run),
        augmentation=_augmentation(run),
        selection=_selection(run),
        early_stopping=_early_stopping(run),
        peft=_peft(run),
        distill=_distill(run),
        pretraining=_pretraining(run),
        weight_decay_rule=bool(run.experiment.get("recipe") is not None and (run.experiment.get("training") or {})
                               .get("weight_decay")),
        command=run.run_info.get("command"),
        has_experiment=bool(run.experiment.get("training")),  # a complete config, one train.py can rerun
        train_block=_indent(metrics_block("train", run.results["train"])) if run.results.get("train") else None,
        eval_sections=[
            {"title": _section_title(prefix), "block": _indent(metrics_block(prefix, metrics))}
            for prefix, metrics in run.results.items() if prefix != "train" and metrics
        ],
        generalization=_generalization(run),
        confusion=[
            {"split": split_name(prefix), "labels": m["labels"], "rows": list(zip(m["labels"], m["matrix"])),
             "figure": figures.get(f"confusion_{prefix}")}
            for prefix, m in run.confusion.items()
        ],
        curves_figure=figures.get("curves"),
        onnx=run.onnx,
        versions=run.run_info.get("versions") or {},
        audit=run.audit,
        diagnostics=_diagnostics(run, figures),
        reproducibility={key: run.run_info.get(key) for key in
                         ("seed", "world_size", "effective_batch_size", "git", "data_fingerprint", "switches")},
    ).content
    return public_text(content, local_folders(run))


GENERALIZATION_METRICS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1": "F1",
                          "precision": "precision", "recall": "recall", "roc_auc": "ROC-AUC",
                          "ece": "calibration error"}


def _generalization(run: RunFiles) -> Optional[Dict[str, Any]]:
    """The card's "Generalization (95% intervals)" table: every evaluated split with its intervals
    (<prefix>_intervals.json), the difference of each to the in-distribution test split."""
    if not run.intervals:
        return None
    # The in-distribution splits are those a run carved or was given with its training data: no
    # source of their own (evaluate.py names the data it evaluated, even as --split test).
    test = run.intervals.get("test") or {}
    baseline = test.get("metrics", {}).get("accuracy", {}).get("value") if test.get("source") is None else None

    def cell(metric: Dict[str, Any]) -> str:
        if not metric or metric.get("value") is None:
            return "n/a"
        bounds = f" ({metric['low']:.3f}-{metric['high']:.3f})" if metric.get("low") is not None else ""
        return f"{metric['value']:.3f}{bounds}"

    own = (run.run_info.get("data") or {}).get("split_sources") or {}  # data.test_dir, data.validation_dir
    rows, resamples = [], set()
    for prefix, payload in run.intervals.items():
        if prefix == "train":
            continue
        metrics = payload.get("metrics", {})
        accuracy = metrics.get("accuracy", {}).get("value")
        rows.append({
            "name": split_name(prefix),
            "source": payload.get("source") or own.get(split_name(prefix), {}).get("name")
            or "held out from the training data",
            "images": payload.get("images"),
            "cells": [cell(metrics.get(key, {})) for key in GENERALIZATION_METRICS],
            "delta": "" if prefix == "test" or baseline is None or accuracy is None
            else f"{100 * (accuracy - baseline):+.1f} points",
        })
        resamples.add((payload.get("bootstrap") or {}).get("resamples"))
    return {"rows": rows, "columns": list(GENERALIZATION_METRICS.values()), "has_test": baseline is not None,
            "resamples": ", ".join(str(r) for r in sorted(r for r in resamples if r))}


def _section_title(prefix: str) -> str:
    if prefix == "eval":
        return "Evaluation Metrics"
    return f"{split_name(prefix).replace('_', ' ').title()} Metrics"
