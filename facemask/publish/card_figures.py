"""The card's figures (confusion matrices, reliability diagrams, training curves, error
galleries), drawn or copied from the run folder's files into the card's folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Optional

from facemask import run_folder
from facemask.evaluation import figures
from facemask.run_folder import RunFiles


def write_figures(run: RunFiles, directory: Path) -> Dict[str, str]:
    """Draw the card's figures from the run's files into `directory`; {what they show: file name}
    of those written. The error gallery needs the images, so the run draws it; a card written
    elsewhere copies it."""
    directory = Path(directory)
    written: Dict[str, Optional[str]] = {}
    for prefix, matrix in run.confusion.items():
        written[f"confusion_{prefix}"] = figures.confusion_figure(prefix, matrix, directory)
    for prefix, calibration in run.calibration.items():
        path = run_folder.CALIBRATION_FIGURE.path(directory, prefix)
        written[f"calibration_{prefix}"] = path.name if figures.reliability_png(calibration, f"{prefix} split",
                                                                               path) else None
    for output, key in ((run_folder.PRETRAINING_LOSS_FIGURE, "pretraining_loss"),
                        (run_folder.RECONSTRUCTIONS_FIGURE, "reconstructions")):
        source = output.path(run.directory)
        if run.pretraining and source.is_file():
            # Drawn by the pretraining run (the reconstructions need the model); copied beside a card written elsewhere.
            if source.resolve() != output.path(directory).resolve():
                shutil.copyfile(source, output.path(directory))
            written[key] = source.name
    if run.state.get("log_history") and not run.pretraining:
        path = run_folder.CURVES_FIGURE.path(directory)
        written["curves"] = path.name if figures.training_curves_png(run.state["log_history"], path) else None
    # Drawn by the evaluation (from images the run's files do not keep): copied beside the card.
    copied = [(prefix, run_folder.ERRORS_FIGURE, "errors") for prefix in run.errors]
    copied += [(prefix, output, key) for prefix in run.robustness
               for output, key in ((run_folder.ROBUSTNESS_FIGURE, "robustness"),
                                   (run_folder.OCCLUSION_FIGURE, "occlusion"))]
    for prefix, output, key in copied:
        source = output.path(run.directory, prefix)
        if source.is_file():
            if source.resolve() != (directory / source.name).resolve():
                shutil.copyfile(source, directory / source.name)
            written[f"{key}_{prefix}"] = source.name
    return {key: name for key, name in written.items() if name}
