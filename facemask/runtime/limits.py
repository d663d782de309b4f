"""The HTTP service's limits (`python -m facemask serve`'s options), apart from the server so that
the command line is built without importing FastAPI."""

from __future__ import annotations

from dataclasses import dataclass

MAX_BYTES = 20_000_000
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; PIL's own bomb limit is ~89 MP (error at twice that)


@dataclass
class Limits:
    max_batch: int = 32  # images in one model call
    max_wait_ms: float = 10.0  # how long a batch's first request waits for others
    max_queue: int = 64  # requests waiting for the model; beyond: 503
    max_bytes: int = MAX_BYTES  # a body; beyond: 413
    max_pixels: int = MAX_PIXELS  # an image; beyond: 400, from its header
    timeout_s: float = 30.0  # a request: 408 while its body arrives, 504 while it waits for the model
