"""Fine-tune ViT/BEiT image classifiers to tell faces with a mask from faces without one."""

from pathlib import Path

__version__ = "0.1.0"

# What the package reads at run time is package data beside this file (the wheel carries it), so
# an installed package works from any folder and a checkout works without being installed.
PACKAGE = Path(__file__).resolve().parent
CONFIGS = PACKAGE / "configs"  # the configs the docs name (configs/ at the top of a checkout links here)
TEMPLATES = PACKAGE / "templates"  # model cards, the Space, the Inference Endpoints handler
CARD_TEMPLATES = TEMPLATES / "cards"
# The exact versions the project is tested with (requirements.txt at the top of a checkout links here):
# a Space pins them, so that it runs what the demo page was tested with.
REQUIREMENTS = PACKAGE / "requirements.txt"
