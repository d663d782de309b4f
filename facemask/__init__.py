"""Fine-tune ViT/BEiT image classifiers to tell faces with a mask from faces without one."""

__version__ = "0.1.0"
