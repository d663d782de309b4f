"""Model cards from the files a run leaves, through huggingface_hub's ModelCard templates: one
template and one builder per kind of card (classifier_card.py for a fine-tuned classifier,
pretraining_card.py for a pretraining run; a repeat's summary card is training/repeat.py's).

Only the run folder's files are read (run_folder.read_run), never the model, so a card can be
regenerated anywhere and the same files always give the same bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from facemask.config.schema import ConfigError
from facemask.publish import classifier_card, pretraining_card
from facemask.publish.card_figures import write_figures
from facemask.run_folder import CARD, CONFIG, REPEAT_RESULTS_JSON, read_run, split_files


def write_card(run_dir: str | Path, output: Optional[str | Path] = None, model_id: Optional[str] = None) -> Path:
    """Regenerate a run's card (and its figures, beside it); returns the card's path."""
    run = read_run(run_dir)
    if not run.model_config:
        # A card of nothing ("classifies a face image as .") would stand in a folder that is no model's.
        repeat = (" It holds a repeat's summary, whose card `repeat` writes; a card is for one of its runs "
                  "(seed-N/, fold-N/)." if (run.directory / REPEAT_RESULTS_JSON).is_file() else "")
        raise ConfigError(f"{run.directory} is not a run folder: it holds no {CONFIG.name} (the model every training "
                          f"and pretraining run saves). Point at a run's output folder.{repeat}")
    path = Path(output) if output else CARD.path(run.directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = write_figures(run, path.parent)
    kind = pretraining_card if run.pretraining else classifier_card
    path.write_text(kind.render_card(run, figures, model_id), encoding="utf-8")
    return path


def add_split_to_card(run_dir: Path, evaluated_in: Path, prefix: str) -> Path:
    """evaluate.py --update-card: the split's files copied into the run folder (when they were
    written elsewhere) and the card regenerated with the split in it."""
    if Path(evaluated_in).resolve() != Path(run_dir).resolve():
        for path in split_files(Path(evaluated_in), prefix):
            shutil.copy(path, Path(run_dir) / path.name)
    return write_card(run_dir)
