"""A server process for tests/test_serve.py: `python tests/serve_app.py PORT DELAY_S [option=value ...]`
serves a stand-in model (every image "with_mask", after DELAY_S seconds a call) through the real
app, batcher and uvicorn, so that limits, overload and shutdown are tested on a real process with a
model whose speed the test sets. The real model is served by `python -m facemask serve` itself.

Options beside the Limits' fields: host=ADDRESS, log=LEVEL (default warning), stages=N and
stage_s=S (a /detect of N stages of S seconds each, its `check` called between them). The API key
is read as `serve` reads it: $FACEMASK_API_KEY."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facemask.runtime.limits import Limits, api_key  # noqa: E402
from facemask.runtime.server import Service, serve  # noqa: E402


def main() -> int:
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    options = dict(arg.split("=", 1) for arg in sys.argv[3:])
    host, log = options.pop("host", "127.0.0.1"), options.pop("log", "warning")
    stages, stage_s = int(options.pop("stages", 1)), float(options.pop("stage_s", 0))
    limits = Limits(**{k: float(v) if "." in v else int(v) for k, v in options.items()})

    def classify(images, names):
        time.sleep(delay)
        return [{"path": name, "label": "with_mask", "confidence": 1.0, "batch": len(images),
                 "size": list(image.size)} for image, name in zip(images, names)]

    def detect(image, name, check):
        for _ in range(stages):
            check()
            time.sleep(stage_s)
        return [{"file": name, "size": list(image.size)}]

    return serve(lambda: Service(["with_mask", "without_mask"], classify, detect, description="stand-in"), host,
                 port, limits, log, api_key=api_key(None))


if __name__ == "__main__":
    sys.exit(main())
