"""Knowledge distillation (Hinton et al. 2015): the student learns from the teacher's softened
probabilities as well as from the labels.

    loss = (1 - alpha) x CE(student, targets) + alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T))

The targets are the recipe's (smoothed, weighted, mixed); T^2 keeps the soft term's gradients on
the scale of the hard one's. The teacher runs without gradients, in eval mode, on the very batch
the student sees after augmentation and mixing, converted to its own input (its normalisation,
its image size). Its logits of an image can be kept when no switch varies the training images: a
cache keyed by the image's pixels, so a miss only costs a teacher pass, never a wrong target.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from facemask.config.schema import ConfigError, DistillConfig

logger = logging.getLogger("facemask")


def teacher_name(teacher: str) -> str:
    """How the card and teacher.json name the teacher: its Hub id, or its run folder's name
    (never a local path: both are published)."""
    if os.path.isdir(teacher):
        return os.path.basename(os.path.abspath(teacher))
    return teacher


def teacher_held_out(teacher: str, digests: Dict[str, Optional[str]]) -> Dict[str, Optional[bool]]:
    """Per split of the student ({split: its digest, data/inspection.py split_digest}): True where the
    teacher's run recorded this very split as one it did not train on, False where it is the
    teacher's training split, None where it cannot be told (a Hub teacher, a run from before the
    per-split digests, a split the teacher's run carved otherwise: another seed or data, so it may
    have trained on some of these images, or a student with data.audit=false). Only True presents
    the teacher's score on the split as held out. Per-split digests cost nothing to compare; a
    per-image check would need every teacher training image's hash kept in its run folder."""
    from facemask.run_folder import RUN_INFO, read_json

    recorded: Dict[str, str] = {}
    info_path = RUN_INFO.path(Path(teacher))
    if os.path.isdir(teacher) and info_path.is_file():
        splits = (read_json(info_path).get("data") or {}).get("splits") or {}
        recorded = {name: s["content_sha256"] for name, s in splits.items() if s.get("content_sha256")}
    held_out: Dict[str, Optional[bool]] = {}
    for split, digest in digests.items():
        if digest is None or not recorded:
            held_out[split] = None
        elif recorded.get("train") == digest:
            held_out[split] = False
        else:
            held_out[split] = any(name != "train" and d == digest for name, d in recorded.items()) or None
    return held_out


def teacher_labels(cfg: DistillConfig) -> List[str]:
    """The teacher's class names, in its label order, from its config alone (no weights read)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(cfg.teacher, revision=cfg.teacher_revision)
    except (OSError, ValueError) as err:
        raise ConfigError(f"'recipe.distill.teacher': cannot load {cfg.teacher!r} ({str(err).splitlines()[0]}); "
                          "give a training run's output folder or a Hub model id") from None
    id2label = getattr(config, "id2label", None) or {}
    return [id2label[i] for i in sorted(id2label)]


def check_teacher(cfg: DistillConfig, labels: List[str]) -> None:
    """The teacher must score the run's classes, in the same order: its soft targets are per class."""
    theirs = teacher_labels(cfg)
    if theirs != list(labels):
        raise ConfigError(f"'recipe.distill.teacher' {teacher_name(cfg.teacher)!r} predicts {theirs}, but this run's "
                          f"classes are {list(labels)}: distil from a teacher trained on the same classes (same "
                          "names, same order)")


def load_teacher(cfg: DistillConfig) -> tuple:
    """(model in eval mode without gradients, its image processor)."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(cfg.teacher, revision=cfg.teacher_revision)
    processor = AutoImageProcessor.from_pretrained(cfg.teacher, revision=cfg.teacher_revision)
    model.eval().requires_grad_(False)
    return model, processor


def _normalisation(processor: Any) -> tuple:
    mean = getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5]
    std = getattr(processor, "image_std", None) or [0.5, 0.5, 0.5]
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


class Teacher:
    def __init__(self, cfg: DistillConfig, student_processor: Any, cache: bool) -> None:
        from facemask.pipeline.processor import processor_image_size

        self.model, self.processor = load_teacher(cfg)
        self.name = teacher_name(cfg.teacher)
        self.alpha, self.temperature = cfg.alpha, cfg.temperature
        self.side = processor_image_size(self.processor)
        s_mean, s_std = _normalisation(student_processor)
        t_mean, t_std = _normalisation(self.processor)
        # student-normalised x -> pixel value -> teacher-normalised: x * scale + shift, per channel.
        self.scale, self.shift = s_std / t_std, (s_mean - t_mean) / t_std
        self.same_input = bool(torch.allclose(self.scale, torch.ones(3)) and torch.allclose(self.shift, torch.zeros(3)))
        self.cache: Optional[Dict[bytes, torch.Tensor]] = {} if cache else None
        self.hits = self.misses = 0
        params = sum(p.numel() for p in self.model.parameters())
        logger.info("distilling from %s (%s parameters), alpha %g, temperature %g%s", self.name, f"{params:,}",
                    self.alpha, self.temperature, ", its logits cached per image" if cache else "")

    def _input(self, pixels: torch.Tensor) -> torch.Tensor:
        if not self.same_input:
            pixels = pixels * self.scale.to(pixels).view(1, 3, 1, 1) + self.shift.to(pixels).view(1, 3, 1, 1)
        if pixels.shape[-1] != self.side or pixels.shape[-2] != self.side:
            pixels = F.interpolate(pixels, size=(self.side, self.side), mode="bilinear", align_corners=False,
                                   antialias=True)
        return pixels

    @torch.no_grad()
    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if next(self.model.parameters()).device != pixels.device:
            self.model.to(pixels.device)
        return self.model(pixel_values=self._input(pixels)).logits.float()

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The teacher's logits (B, C) of the batch the student sees."""
        if self.cache is None:
            return self._forward(pixels)
        keys = [hashlib.blake2b(x.detach().to("cpu", torch.float32).numpy().tobytes(), digest_size=16).digest()
                for x in pixels]
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        if todo:
            fresh = self._forward(pixels[todo])
            for i, row in zip(todo, fresh):
                self.cache[keys[i]] = row
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        return torch.stack([self.cache[key] for key in keys]).to(pixels.device)


class AsUsed(torch.nn.Module):
    """The teacher as training runs it, for scoring it on the targets it gave: it reads the
    student's batch (the student's normalisation and image size) and converts it to its own input
    (Teacher._input: renormalised, resized to its side), uncached."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.model, self.teacher = teacher.model, teacher

    @property
    def config(self) -> Any:
        # The Trainer reads a model's config (label smoothing checks its problem_type): the teacher's.
        return self.model.config

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        return self.model(pixel_values=self.teacher._input(pixel_values), labels=labels, **kwargs)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """(1 - alpha) x the hard loss + alpha x T^2 x KL(teacher_T || student_T), batch mean."""
    soft = F.kl_div(F.log_softmax(student.float() / temperature, dim=-1),
                    F.log_softmax(teacher.float() / temperature, dim=-1), log_target=True, reduction="batchmean")
    return (1.0 - alpha) * hard_loss + alpha * temperature ** 2 * soft
