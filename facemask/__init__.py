"""Fine-tune ViT/BEiT image classifiers to tell faces with a mask from faces without one."""

from pathlib import Path

__version__ = "0.1.0"

# The repository the package runs from: its model-card and Space templates, its requirements.
REPO = Path(__file__).resolve().parent.parent
CARD_TEMPLATES = REPO / "model_cards"
