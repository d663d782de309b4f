"""A server process for tests/test_serve.py: `python tests/serve_app.py PORT DELAY_S [option=value ...]`
serves a stand-in model (every image "with_mask", after DELAY_S seconds a call) through the real
app, batcher and uvicorn, so that limits, overload and shutdown are tested on a real process with a
model whose speed the test sets. The real model is served by `python -m facemask serve` itself."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.runtime.limits import Limits  # noqa: E402
from facemask.runtime.server import Service, serve  # noqa: E402


def main() -> int:
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    options = dict(arg.split("=", 1) for arg in sys.argv[3:])
    limits = Limits(**{k: float(v) if "." in v else int(v) for k, v in options.items()})

    def classify(images, names):
        time.sleep(delay)
        return [{"path": name, "label": "with_mask", "confidence": 1.0, "batch": len(images),
                 "size": list(image.size)} for image, name in zip(images, names)]

    return serve(lambda: Service(["with_mask", "without_mask"], classify, description="stand-in"), "127.0.0.1",
                 port, limits, "warning")


if __name__ == "__main__":
    sys.exit(main())
