"""The HTTP service's limits (`python -m facemask serve`'s options), apart from the server so that
the command line is built without importing FastAPI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from facemask.config.schema import ConfigError

MAX_BYTES = 20_000_000
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; PIL's own bomb limit is ~89 MP (error at twice that)
MAX_MEMORY_MB = 1024
# Bytes a pixel may cost while it is decoded and converted, beyond the bytes PIL stores it in: a
# full-size conversion or two (RGBA composited on grey, 16-bit to 32-bit before the reduce).
CONVERSION_BYTES = 12
DRAIN_MARGIN_S = 10.0  # decoding, which --timeout does not cut short, and the answer's writing
API_KEY_ENV = "FACEMASK_API_KEY"


@dataclass
class Limits:
    max_batch: int = 32  # images in one model call
    max_wait_ms: float = 10.0  # how long a batch's first request waits for others
    max_queue: int = 64  # requests waiting for the model; beyond: 503
    max_bytes: int = MAX_BYTES  # a body; beyond: 413
    max_pixels: int = MAX_PIXELS  # an image; beyond: 400, from its header
    timeout_s: float = 30.0  # each of a request's two stages: 408/503 while its body arrives and is decoded,
    # 504 while it waits for the model
    max_memory_mb: float = MAX_MEMORY_MB  # bodies and decoded images, all requests together; beyond: wait, then 503
    drain_s: Optional[float] = None  # SIGTERM's wait for the requests in flight; None: what a request can take

    @property
    def drain(self) -> float:
        """Seconds SIGTERM waits: --drain, or what a request may legitimately take (its body and
        decoding, then the model, each up to --timeout, and the decoding's own time)."""
        return self.drain_s if self.drain_s is not None else 2 * self.timeout_s + DRAIN_MARGIN_S

    @property
    def max_memory(self) -> int:
        return int(self.max_memory_mb * 1_000_000)

    def one_image_memory(self) -> int:
        """The most one request's largest image can hold while it is decoded, with its body."""
        return self.max_pixels * (4 + CONVERSION_BYTES) + 2 * self.max_bytes


def api_key(given: Optional[str], environ: Mapping[str, str] = os.environ) -> Optional[str]:
    """The key callers must send: --api-key, else $FACEMASK_API_KEY (which keeps it out of shell
    history and `ps`), else None (no key asked). An empty key is an error, not "no key"."""
    key = given if given is not None else environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        origin = "--api-key" if given is not None else f"${API_KEY_ENV}"
        raise ConfigError(f"{origin} is empty: give the key callers must send, or leave it unset to ask none")
    return key.strip() if key is not None else None
