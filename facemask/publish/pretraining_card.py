"""A pretraining run's card (pretraining.md.j2): the encoder, its objective, data and image count,
the loss curve and the reconstructions, from the run folder's files."""

from __future__ import annotations

from typing import Dict, Optional

from huggingface_hub import ModelCard, ModelCardData

from facemask import CARD_TEMPLATES
from facemask.publish.naming import hub_model_id, model_name
from facemask.run_folder import RunFiles

TEMPLATE = CARD_TEMPLATES / "pretraining.md.j2"

OBJECTIVES = {"simmim": "SimMIM (Xie et al., 2022): the masked patches are replaced by a learned mask token and the "
                         "encoder's output is decoded back to pixels (a 1x1 convolution and a pixel shuffle); the loss "
                         "is the L1 error on the masked pixels alone"}


def render_card(run: RunFiles, figures: Dict[str, str], model_id: Optional[str] = None) -> str:
    """A pretraining run's card: objective, data, image count, loss curve and reconstructions."""
    record = run.pretraining
    model_id = hub_model_id(run, model_id)
    card = run.experiment.get("card") or {}
    started = record.get("started_from", "")
    base = started if started and "(" not in started and started != "random init" else None
    data = ModelCardData(model_name=model_name(run, model_id), license=card.get("license", "apache-2.0"),
                         library_name="transformers", base_model=base,
                         tags=["vision", "masked-image-modeling", record.get("model_type", ""), "face-mask"])
    history = run.state.get("log_history") or []
    training = run.experiment.get("training") or {}
    hyper = ", ".join(f"{k} {training[k]}" for k in ("learning_rate", "per_device_train_batch_size", "weight_decay")
                      if k in training)
    seconds = record.get("train_seconds")
    names = {"vit": "ViT", "beit": "BEiT"}
    return ModelCard.from_template(
        data, template_path=str(TEMPLATE),
        title=f"{model_name(run, model_id)}: a {names.get(record.get('model_type'), record.get('model_type'))} encoder "
              "pretrained by masked image modelling",
        architecture=names.get(record.get("model_type"), record.get("model_type")), record=record,
        images_total=sum((record.get("images") or {}).values()), folder=run.directory.resolve().name,
        model_id=model_id, objective_text=OBJECTIVES.get(record.get("objective"), record.get("objective")),
        epochs=record.get("epochs"), steps=run.state.get("global_step", len(history)),
        train_time=(f"{seconds / 60:.1f} minutes" if seconds >= 60 else f"{seconds:.1f} s") + " of training"
        if seconds else "time not recorded", hyper=hyper,
        fmt=lambda v: "not measured" if v is None else f"{v:.4f}",
        loss_figure=figures.get("pretraining_loss"), reconstructions_figure=figures.get("reconstructions"),
    ).content
