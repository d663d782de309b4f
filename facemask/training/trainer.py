"""The Trainer subclass and its assembly for a run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from facemask.config.schema import ConfigError, ExperimentConfig
from facemask.data.labels import resolve_positive_label
from facemask.data.sources import PreparedData
from facemask.data.storage import first_line, require_space
from facemask.evaluation.metrics import make_compute_metrics
from facemask.pipeline.augment import BatchTransform
from facemask.pipeline.inputs import AugmentationEpochCallback, InputPipeline, eval_batches
from facemask.recipe.balance import BalancedSampler
from facemask.recipe.build import Recipe, RecordedEarlyStopping, build_recipe
from facemask.recipe.distill import distillation_loss
from facemask.recipe.ema import WeightAverage
from facemask.recipe.loss import smoothed_targets, soft_cross_entropy
from facemask.recipe.param_groups import describe, parameter_groups
from facemask.run_folder import CHECKPOINTS, CONFIG, STATE
from facemask.training import console
from facemask.training.resume import latest_checkpoint

logger = logging.getLogger("facemask")


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written; the message names the one to resume from."""


class FaceMaskTrainer(Trainer):
    """Trainer that turns cached uint8 batches into model inputs on the device, and whose
    checkpoint reloads go through `from_pretrained`.

    transformers 5 saves checkpoints under the original (Hub) parameter names but reloads the best
    model and resumed checkpoints with a plain non-strict `load_state_dict`, so for ViT every
    encoder weight is reported missing and silently left as it was (huggingface/transformers#43701).
    `from_pretrained` applies the name conversion; the weights are then copied in strictly.

    With a `recipe` (train.py always passes one), training uses the recipe's loss on soft targets
    (label smoothing, class weights, mixup/CutMix), its optimizer parameter groups, sampler and
    weight average; evaluation loss stays plain cross-entropy.
    """

    def __init__(self, *args: Any, batch_transform: Optional[BatchTransform] = None,
                 recipe: Optional[Recipe] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_transform = batch_transform
        if batch_transform is not None:
            # A step's inputs are dropped when it ends, unless metrics are asked to see them.
            batch_transform.reuse_output = "inputs" not in (self.args.include_for_metrics or [])
        self.recipe = recipe
        self.ema: Optional[WeightAverage] = None
        self._micro_batch = (-1, 0)  # (optimizer step, micro-batch within it): keys the mixing draw
        # For a hyperparameter search: (the trial's values, a function applying them to the recipe).
        self.search_setup: Optional[tuple] = None
        self._fresh_average = False
        # Every loss this project trains on (the recipe's, SimMIM's pixel loss) is a per-batch mean that
        # ignores num_items_in_batch: the Trainer must divide it by the accumulation steps itself.
        self.loss_is_scaled_for_ga = False
        if recipe is not None:
            # The recipe's loss smooths labels itself, and only in training.
            self.label_smoother = None
            self.model_accepts_loss_kwargs = False
            if recipe.ema is not None:
                self.ema = WeightAverage(self.accelerator.unwrap_model(self.model), **recipe.ema)
            self.add_callback(_UpdateAverage(self))

    def _hp_search_setup(self, trial: Any) -> None:
        """A search trial: TrainingArguments fields go through the Trainer; the rest of the
        trial's config (recipe, model, augmentation) through `search_setup`."""
        if trial is None or self.search_setup is None or self.hp_search_backend is None:
            return super()._hp_search_setup(trial)
        values_of, apply = self.search_setup
        values = values_of(trial)
        dotted = self.hp_space
        self.hp_space = lambda t: {k.split(".", 1)[1]: v for k, v in dotted(t).items() if k.startswith("training.")}
        try:
            super()._hp_search_setup(trial)
        finally:
            self.hp_space = dotted
        apply(values)
        self._fresh_average = True  # the trial's model is built after this; its average at train begin

    def floating_point_ops(self, inputs: Dict[str, Any]) -> int:
        """The Trainer's estimate, 6 x non-embedding parameters x tokens (forward and backward, Kaplan
        et al. 2020), with an image's tokens counted as the model sees them: its patches and the class
        token. The stock rule finds no `pixel_values` in a cached batch (uint8 `pixels`, made into
        model inputs on the device) and counts 0; on `pixel_values` it would count every pixel value as
        a token, 3 x patch_size^2 times too many."""
        batch = inputs.get("pixels", inputs.get("pixel_values"))
        model = self.accelerator.unwrap_model(self.model)
        config = getattr(model, "config", None)
        size, patch = getattr(config, "image_size", None), getattr(config, "patch_size", None)
        if batch is None or not size or not patch or not hasattr(model, "num_parameters"):
            return super().floating_point_ops(inputs)
        height, width = (size, size) if isinstance(size, int) else size[:2]
        patch_h, patch_w = (patch, patch) if isinstance(patch, int) else patch[:2]
        tokens = (height // patch_h) * (width // patch_w) + 1
        return 6 * len(batch) * tokens * model.num_parameters(exclude_embeddings=True)

    def _prepare_inputs(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        inputs = super()._prepare_inputs(inputs)
        if self.batch_transform is not None and "pixels" in inputs:
            # After the move to the device: a GPU crops and normalises its own batches, and the
            # host sends a quarter of the bytes (uint8, not float32).
            inputs = self.batch_transform(inputs, train=self.model.training)
        if self.recipe is not None and self.model.training and "labels" in inputs:
            inputs = self._training_targets(inputs)
        return inputs

    def _training_targets(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        r = self.recipe
        targets = smoothed_targets(inputs["labels"], r.num_labels, r.label_smoothing)
        pixels = inputs["pixel_values"]
        step, micro = self._micro_batch
        self._micro_batch = (step, micro + 1) if step == self.state.global_step else (self.state.global_step, 0)
        if r.photometric is not None:
            pixels = r.photometric(pixels, *self._micro_batch)
        if r.mixer is not None:
            pixels, targets = r.mixer(pixels, targets, *self._micro_batch)
        return {**inputs, "pixel_values": pixels, "labels": targets}

    def compute_loss(self, model: Any, inputs: Dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        targets = inputs.get("labels")
        if self.recipe is None or targets is None or targets.ndim != 2:
            # Evaluation (integer labels): the model's own cross-entropy.
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = soft_cross_entropy(outputs.logits, targets, self.recipe.class_weights)
        teacher = self.recipe.teacher
        if teacher is not None:
            # The batch after augmentation and mixing: the teacher's soft targets are of what the student saw.
            loss = distillation_loss(outputs.logits, teacher.logits(inputs["pixel_values"]), loss, teacher.alpha,
                                     teacher.temperature)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        opt_model = self.model if model is None else model
        if self.recipe is None or self.optimizer is not None:
            return super().create_optimizer(model)
        cls, kwargs = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)) or \
                {"params", "model", "optimizer_dict"} & set(kwargs):
            if self.recipe.layer_decay is not None:
                raise ConfigError(f"'recipe.layer_decay' needs a plain torch optimizer; training.optim="
                                  f"{self.args.optim} builds its own parameter groups")
            return super().create_optimizer(model)
        groups = parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.recipe.layer_decay)
        logger.info("optimizer parameter groups: %s", describe(groups))
        self.optimizer = cls([{k: v for k, v in g.items() if k != "names"} for g in groups], **kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.recipe is not None and self.recipe.sampler_labels is not None:
            return BalancedSampler(self.recipe.sampler_labels, self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def evaluate(self, *args: Any, **kwargs: Any) -> Dict[str, float]:
        if self.ema is None:
            metrics = super().evaluate(*args, **kwargs)
        else:
            with self.ema.applied(self.accelerator.unwrap_model(self.model)):
                metrics = super().evaluate(*args, **kwargs)
        trial = getattr(self, "_trial", None)
        if trial is not None and hasattr(trial, "set_user_attr"):
            trial.set_user_attr("eval", {k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        return metrics

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.ema is not None and _internal_call and self.args.should_save:
            # A checkpoint: the live weights (resumed from) and their average, before trainer_state.json
            # marks the checkpoint complete.
            self.ema.save(output_dir or self.args.output_dir)

    def checkpoint_bytes(self) -> int:
        """About what one checkpoint takes: the weights, AdamW's two moments of the trained ones, the
        EMA's copy, and a little for the scheduler, RNG and trainer state."""
        model = self.accelerator.unwrap_model(self.model) if self.model is not None else None
        if model is None:
            return 0
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        moments = 2 * 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        return int((weights * (2 if self.recipe and self.recipe.ema else 1) + moments) * 1.05) + 1_000_000

    def require_checkpoint_space(self) -> None:
        """Before training: room for one checkpoint (the Trainer keeps several; each save checks again)."""
        if self.args.save_strategy != "no" and self.args.should_save:
            require_space(Path(self.args.output_dir), self.checkpoint_bytes(), "a checkpoint",
                          "set training.output_dir to a larger disk, or save less often (training.save_strategy, "
                          "training.save_total_limit)")

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """The Trainer's save, with its room checked first; a save that fails removes its incomplete
        folder and says which checkpoint is intact to --resume from."""
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{CHECKPOINTS.name[:-1]}{self.state.global_step}"
        try:
            if self.args.should_save:
                require_space(run_dir, self.checkpoint_bytes(), f"saving {folder.name}",
                              f"set training.output_dir to a larger disk; then continue with --resume from "
                              f"{latest_checkpoint(run_dir) or 'the start'}")
            super()._save_checkpoint(model, trial)
        except ConfigError as err:  # mid-training, no room is a failure of the run (exit 1), not of its config
            raise CheckpointError(str(err)) from None
        except Exception as err:  # a full disk: OSError, torch.save's RuntimeError, SafetensorError
            if self.args.should_save and folder.is_dir() and not STATE.path(folder).is_file():
                shutil.rmtree(folder, ignore_errors=True)  # incomplete: never resumed from, only in the way
            previous = latest_checkpoint(run_dir)
            intact = (f"{previous} is intact: free some space, then continue with --resume" if previous
                      else "there is no earlier checkpoint to resume from")
            reason = err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)
            raise CheckpointError(f"saving {folder} failed ({reason}); {intact}") from err

    def train(self, *args: Any, **kwargs: Any) -> Any:
        result = super().train(*args, **kwargs)
        if self.ema is not None:
            # The average (of the best checkpoint, where one was reloaded) is the model from here on.
            self.ema.copy_to(self.accelerator.unwrap_model(self.model))
        return result

    def _reload(self, checkpoint: str, model: Any) -> None:
        target = self.accelerator.unwrap_model(model)
        loaded = type(target).from_pretrained(checkpoint)
        target.load_state_dict(loaded.state_dict(), strict=True)
        logger.info("loaded weights from %s", checkpoint)

    def _plain_checkpoint(self, checkpoint: Optional[str]) -> bool:
        return (
            checkpoint is not None
            and CONFIG.path(Path(checkpoint)).is_file()
            and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if self._plain_checkpoint(resume_from_checkpoint):
            self._reload(resume_from_checkpoint, model if model is not None else self.model)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.ema is not None:
            self.ema.load(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self._plain_checkpoint(self.state.best_model_checkpoint):
            self._reload(self.state.best_model_checkpoint, self.model)
        else:
            super()._load_best_model()
        if self.ema is not None:
            self.ema.load(self.state.best_model_checkpoint)


class _UpdateAverage(TrainerCallback):
    def __init__(self, trainer: FaceMaskTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        if trainer._fresh_average:
            # A search trial: a new model, and the trial's own EMA setting (or none).
            ema = trainer.recipe.ema
            trainer.ema = WeightAverage(trainer.accelerator.unwrap_model(trainer.model), **ema) if ema else None
            trainer._fresh_average = False
        elif trainer.ema is not None:
            # The Trainer may have replaced the parameters since set-up (a model placed on its device
            # only now, with fp16_full_eval): the average follows the ones that train.
            trainer.ema.attach(trainer.accelerator.unwrap_model(trainer.model))

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer.ema is not None:
            self.trainer.ema.step(state.global_step)


def build_trainer(model: Any, args: TrainingArguments, data: PreparedData, processor: Any, cfg: ExperimentConfig,
                  pipeline: InputPipeline, model_init: Optional[Callable[..., Any]] = None) -> FaceMaskTrainer:
    pos_label = resolve_positive_label(data.labels, cfg.data.positive_label)
    train_labels: List[int] = list(data.splits["train"][data.label_column])
    recipe = build_recipe(cfg, data.labels, train_labels, args.process_index, processor)
    callbacks: List[TrainerCallback] = [AugmentationEpochCallback(pipeline.clock)]
    if cfg.recipe.early_stopping_patience is not None:
        callbacks.append(RecordedEarlyStopping(cfg.recipe.early_stopping_patience, cfg.recipe.early_stopping_threshold))
    trainer = FaceMaskTrainer(
        model=model,
        model_init=model_init,
        args=args,
        train_dataset=pipeline.splits["train"],
        eval_dataset=pipeline.splits.get("validation"),
        data_collator=pipeline.collate,
        processing_class=processor,
        compute_metrics=make_compute_metrics(pos_label),
        callbacks=callbacks,
        batch_transform=pipeline.batch_transform,
        recipe=recipe,
    )
    console.install(trainer)
    return trainer


def evaluation_trainer(model: Any, processor: Any, args: TrainingArguments, preprocess: str,
                       pos_label: int) -> FaceMaskTrainer:
    """A Trainer that only predicts (evaluate.py), reading inputs made by `pipeline.inputs.eval_view`."""
    collator, transform = eval_batches(processor, preprocess)
    return FaceMaskTrainer(model=model, args=args, data_collator=collator, processing_class=processor,
                           compute_metrics=make_compute_metrics(pos_label), batch_transform=transform)


def early_stopping_record(trainer: FaceMaskTrainer) -> Dict[str, Any]:
    """Where early stopping ended the run, for train_results.json; empty if it did not."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, RecordedEarlyStopping) and callback.stopped:
            return dict(callback.stopped)
    return {}
