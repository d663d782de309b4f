"""What a training run prints: a progress bar with the running loss (progress lines where the
console is not a terminal: facemask/progress.py), and one readable line per evaluation, instead of
the Trainer's raw dict per logging step. Every log entry still goes, in
full, to OUTPUT_DIR/train_log.jsonl (and trainer_state.json's log_history)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, TextIO

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from facemask.progress import progress
from facemask.run_folder import TRAIN_LOG

_SHOWN = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "loss")


def evaluation_line(logs: Dict[str, Any], epoch: Optional[float], num_epochs: Optional[float]) -> Optional[str]:
    """'epoch 3.0/10  validation: accuracy 0.947  balanced_accuracy 0.946  ...', or None for a
    log entry that is not an evaluation."""
    scores = {key[len("eval_"):]: value for key, value in logs.items() if key.startswith("eval_")}
    if "loss" not in scores and "accuracy" not in scores:
        return None
    shown = "  ".join(f"{name} {scores[name]:.4f}" for name in _SHOWN if name in scores)
    where = f"epoch {epoch:.2f}" + (f"/{num_epochs:g}" if num_epochs else "") if epoch is not None else "end"
    return f"{where}  validation: {shown}"


class ConsoleProgress(TrainerCallback):
    def __init__(self, show_bar: bool) -> None:
        self.show_bar = show_bar
        self.bar: Any = None
        self.step = 0
        self.training = False
        self._log: Optional[TextIO] = None  # train_log.jsonl, held open while training logs every few steps

    def _append(self, path: str, entry: Dict[str, Any]) -> None:
        if self._log is None or self._log.name != path:
            self._close()
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._log = open(path, "a", encoding="utf-8")
        self._log.write(json.dumps(entry) + "\n")
        self._log.flush()  # a killed run keeps every entry written so far
        if not self.training:
            self._close()  # an evaluation outside training: one entry, nothing held open

    def _close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True
        if state.is_world_process_zero and self.show_bar:
            self.step = state.global_step
            self.bar = progress(total=state.max_steps, desc="training", unit="step", initial=self.step,
                                dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.step)
            self.step = state.global_step

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[Dict[str, Any]] = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        if args.output_dir:
            self._append(str(TRAIN_LOG.path(args.output_dir)), {"step": state.global_step, **logs})
        if "loss" in logs and self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['loss']:.4g}", lr=f"{logs.get('learning_rate', 0):.3g}", refresh=False)
        line = evaluation_line(logs, logs.get("epoch", state.epoch), args.num_train_epochs if args.max_steps <= 0
                               else None)
        if line:
            self._print(line)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False
        self._close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def install(trainer: Any) -> None:
    """Replaces the Trainer's printer (raw dicts) or progress callback with ConsoleProgress."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ConsoleProgress(show_bar=not trainer.args.disable_tqdm))
