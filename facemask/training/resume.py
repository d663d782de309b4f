"""Run-folder policy: what --resume continues, what --overwrite may delete, and the command line."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from facemask import REPO
from facemask.config.schema import ConfigError
from facemask.run_folder import CHECKPOINTS, EXPERIMENT, RESULTS, RUN_MARKERS, STATE


def parse_args(argv: Optional[List[str]], description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment YAML file, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.learning_rate=3e-5")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue the run in training.output_dir from its latest checkpoint, or from CHECKPOINT")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete what training.output_dir holds and start the run over")
    # Options and overrides in any order: `CONFIG --overwrite training.x=1` as well as the other way.
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_intermixed_args(argv)
    # `--resume section.key=value` would take the override as a checkpoint path: give it back, in
    # its place on the command line (a later override wins over an earlier one).
    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        given = set(args.overrides) | {args.resume}
        args.overrides = [arg for arg in argv if arg in given]
        args.resume = "latest"
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    return args


def latest_checkpoint(output_dir: Path) -> Optional[str]:
    """The newest checkpoint that was written completely: a kill mid-save leaves one without its
    trainer_state.json (the Trainer's last write), which cannot be resumed from."""
    if not output_dir.is_dir():
        return None
    complete = [p for p in output_dir.glob(CHECKPOINTS.name) if STATE.path(p).is_file()
                and p.name.split("-")[-1].isdigit()]
    return str(max(complete, key=lambda p: int(p.name.split("-")[-1]))) if complete else None


def previous_run(output_dir: Path) -> Optional[str]:
    """What an earlier run left in output_dir: 'finished', 'interrupted', or None for nothing."""
    if not output_dir.is_dir():
        return None
    if RESULTS.path(output_dir, "train").is_file():
        return "finished"
    if any(output_dir.glob(CHECKPOINTS.name)) or EXPERIMENT.path(output_dir).is_file():
        return "interrupted"
    return None


def resolve_resume(output_dir: Path, resume: Optional[str], overwrite: bool) -> Optional[str]:
    """The checkpoint to resume from, None to start afresh; refuses to silently reuse a run folder."""
    if resume == "latest":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None:
            raise ConfigError(f"--resume: {output_dir} holds no complete checkpoint-* folder to resume from")
        return checkpoint
    if resume:
        if not STATE.path(Path(resume)).is_file():
            raise ConfigError(f"--resume {resume}: not a checkpoint folder (no trainer_state.json)")
        return resume
    state = previous_run(output_dir)
    if state and not overwrite:
        raise ConfigError(
            f"{output_dir} already holds a {state} run. Pass --resume to continue it from its latest checkpoint "
            "(or --resume CHECKPOINT), or --overwrite to delete it and start over; or choose another "
            "training.output_dir"
        )
    return None


def overwrite_refusal(output_dir: Path) -> Optional[str]:
    """Why --overwrite must not delete `output_dir`, or None: only an empty folder or one that is
    recognisably a run's (it holds run files or checkpoints), never the working directory, the
    repository, the home folder or a folder holding any of them."""
    target = output_dir.expanduser().resolve()
    protected = {"the current directory": Path.cwd().resolve(), "the home folder": Path.home().resolve(),
                 "this repository": REPO}
    for name, place in protected.items():
        if target == place or target in place.parents:
            return f"--overwrite would delete {target}, which is {name} or holds it; choose a run's own output folder"
    if not target.is_dir() or not any(target.iterdir()):
        return None
    if any((target / marker).is_file() for marker in RUN_MARKERS) or any(target.glob(CHECKPOINTS.name)):
        return None
    return (f"--overwrite: {target} holds files but no run's (no {', '.join(RUN_MARKERS[:3])}, checkpoint-*): "
            "it was not made by train.py, so it is left alone; choose another training.output_dir")


def clear_output_dir(output_dir: Path) -> None:
    """--overwrite: empty a run folder (see overwrite_refusal for what is never deleted)."""
    reason = overwrite_refusal(output_dir)
    if reason:
        raise ConfigError(reason)
    if output_dir.is_dir():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)


def claim_output_dir(output_dir: Path, resume: Optional[str], overwrite: bool, main_process: bool) -> Optional[str]:
    """train.py's use of the run folder: the checkpoint to resume from (None: a fresh run), after
    --overwrite emptied the folder. Every process checks, so none goes on alone; the main one deletes."""
    checkpoint = resolve_resume(output_dir, resume, overwrite)
    if overwrite:
        reason = overwrite_refusal(output_dir)
        if reason:
            raise ConfigError(reason)
        if main_process:
            clear_output_dir(output_dir)
    return checkpoint
