"""The card's figures (confusion matrices, reliability diagrams, training curves, error
galleries), drawn or copied from the run folder's files into the card's folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

from facemask.evaluation import figures as plots
from facemask.run_folder import RunFiles, split_name


def figure_names(run: RunFiles) -> Dict[str, str]:
    """File names of the card's figures, keyed by what they show."""
    names = {f"confusion_{prefix}": f"{prefix}_confusion_matrix.png" for prefix in run.confusion}
    names.update({f"calibration_{prefix}": f"{prefix}_calibration.png" for prefix in run.calibration})
    if run.state.get("log_history"):
        names["curves"] = "training_curves.png"
    return names


def write_figures(run: RunFiles, directory: Path) -> Dict[str, str]:
    """Draw the figures into `directory`; returns those that were written."""
    written = {}
    for key, name in figure_names(run).items():
        if key == "curves":
            ok = plots.training_curves_png(run.state["log_history"], directory / name)
        elif key.startswith("calibration_"):
            prefix = key[len("calibration_"):]
            ok = plots.reliability_png(run.calibration[prefix], f"{prefix} split", directory / name)
        else:
            prefix = key[len("confusion_"):]
            ok = plots.confusion_matrix_png(run.confusion[prefix], f"{split_name(prefix)} split", directory / name)
        if ok:
            written[key] = name
    for prefix in run.errors:
        # The error gallery needs the images, so the run draws it; a card written elsewhere copies it.
        source = run.directory / f"{prefix}_errors.png"
        if source.is_file():
            if source.resolve() != (directory / source.name).resolve():
                shutil.copyfile(source, directory / source.name)
            written[f"errors_{prefix}"] = source.name
    return written
