"""Which class is the positive one, by its name (no dataset needed: the torch-free runtime reads it)."""

from __future__ import annotations

import re
from typing import List, Optional

from facemask.config.schema import ConfigError

_NEGATIVE = re.compile(r"(^|[^a-z])(no|non|not|without|un)($|[^a-z])|^no|without|unmask|nomask", re.I)


def resolve_positive_label(labels: List[str], configured: Optional[str]) -> int:
    """Index of the class scored as positive: the configured one, else the 'with mask' class."""
    if configured is not None:
        if configured not in labels:
            raise ConfigError(f"'data.positive_label' is '{configured}' but the classes are: {', '.join(labels)}")
        return labels.index(configured)
    masked = [i for i, name in enumerate(labels) if "mask" in name.lower() and not _NEGATIVE.search(name)]
    if len(masked) == 1:
        return masked[0]
    # Not a face-mask naming we recognise: follow scikit-learn's convention for binary labels.
    return len(labels) - 1
