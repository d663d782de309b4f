"""Evaluate a saved or Hub model on a dataset (not implemented yet: see the project's issue list).

This file shares its name with the `evaluate` library. Python puts a script's folder first on
sys.path, so code run from the repository root must not `import evaluate` directly: the package
imports the library through `facemask.metrics.import_evaluate_library`, which skips this file.
"""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    print("evaluate.py is not implemented yet; train.py evaluates on the validation and test splits.",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
