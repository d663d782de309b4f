"""The corruption suite: what a camera does to a face, at 5 severities each, written down once.

Severities follow ImageNet-C (Hendrycks & Dietterich, 2019, `make_imagenet_c.py`) where it has
the corruption; they are defined there on 224-pixel images, so every spatial size below is scaled
by side / 224 for the model's input side (the image is corrupted as the model sees it: resized and
cropped by the run's processor first, as ImageNet-C corrupts its 224-pixel crops).

- gaussian_noise: ImageNet-C's standard deviations on [0, 1] pixels.
- motion_blur: ImageNet-C calls ImageMagick's motion blur (radius, sigma: a one-sided Gaussian
  along the direction). kornia's motion kernel is a uniform line; its length L is chosen so that
  the spread matches (a uniform line's std L/sqrt(12) equals the half-normal's 0.60 sigma:
  L = 2.1 sigma), for ImageNet-C's sigmas 3, 5, 8, 12, 15. The angle is drawn in [-45, 45]
  degrees, as there.
- defocus_blur: ImageNet-C's disk kernel (radius) followed by its small Gaussian (alias blur),
  applied with kornia's filter2d and gaussian_blur2d.
- jpeg_compression: ImageNet-C's qualities, through Pillow's JPEG codec, the codec real cameras and
  the scraped sets use (kornia's JPEG is a differentiable approximation of it, made for training).
- contrast: ImageNet-C's factors, each channel pulled towards its own mean.
- pixelate: ImageNet-C's factors: Pillow's box filter down to factor x side and back up.
- low_light: not in ImageNet-C. A darkening gamma curve (kornia's adjust_gamma) and the sensor
  noise of a dark exposure: photon shot noise (Poisson, with fewer photons at each severity) and
  read noise (Gaussian, 0.01). Ours: the gammas take a mid-grey face (0.5) to 0.35, 0.25, 0.18,
  0.13, 0.09, a dim corridor down to a night-time frame; the photon counts (at white) are ours,
  chosen so that a mid-grey pixel's shot noise is 0.077 at severity 1 and 0.094 at 5 (std on
  [0, 1]), about ImageNet-C's Gaussian noise at its severity 1, as the signal falls by 4.

Each corrupted image is a function of (image, corruption, severity, seed): its random draws come
from a generator seeded by those and the image's own pixels, so the table is reproducible and an
image is corrupted the same way in any order or batch.
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable, Dict, List

import numpy as np
import torch
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)
IMAGENET_C_SIDE = 224

# name -> its 5 severities' parameters, lowest first.
SUITE: Dict[str, List] = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "motion_blur": [6.3, 10.5, 16.8, 25.2, 31.5],  # line length in pixels at 224 (2.1 x sigma)
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],  # disk radius, alias sigma
    "jpeg_compression": [25, 18, 15, 10, 7],  # quality
    "low_light": [(1.5, 60.0), (2.0, 40.0), (2.5, 25.0), (3.0, 15.0), (3.5, 10.0)],  # gamma, photons at white
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
}
READ_NOISE = 0.01


def generator(image: Image.Image, name: str, severity: int, seed: int) -> np.random.Generator:
    """The random draws for this image under this corruption: fixed by them, not by order."""
    key = hashlib.sha256(np.asarray(image).tobytes()).digest()[:8]
    return np.random.default_rng([seed, list(SUITE).index(name), severity, int.from_bytes(key, "little")])


def corrupt(image: Image.Image, name: str, severity: int, seed: int = 0) -> Image.Image:
    """`image` (RGB, at the model's input side) under corruption `name` at `severity` (1-5)."""
    if name not in SUITE:
        raise KeyError(f"unknown corruption {name!r}: one of {', '.join(SUITE)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity}: 1 to 5")
    rng = generator(image, name, severity, seed)
    return _CORRUPTIONS[name](image.convert("RGB"), SUITE[name][severity - 1], rng)


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _image(x: torch.Tensor) -> Image.Image:
    pixels = (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(pixels)


def _scale(image: Image.Image) -> float:
    return min(image.size) / IMAGENET_C_SIDE


def _gaussian_noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(image, dtype=np.float32) / 255.0
    noisy = x + rng.normal(scale=sigma, size=x.shape).astype(np.float32)
    return Image.fromarray((np.clip(noisy, 0, 1) * 255.0).round().astype(np.uint8))


def _motion_blur(image: Image.Image, length: float, rng: np.random.Generator) -> Image.Image:
    from kornia.filters import motion_blur

    size = max(3, int(round(length * _scale(image))) | 1)  # odd, at least 3
    angle = float(rng.uniform(-45, 45))
    return _image(motion_blur(_tensor(image), size, angle, 0.0, border_type="replicate"))


def _disk(radius: float) -> torch.Tensor:
    """ImageNet-C's disk, with a one-pixel soft edge: scaled to a small input side its radius is
    fractional (3 x 64 / 224 = 0.86), and a hard edge would leave a one-pixel kernel (no blur)."""
    reach = int(np.ceil(radius + 0.5))
    y, x = np.mgrid[-reach:reach + 1, -reach:reach + 1]
    kernel = np.clip(radius + 0.5 - np.sqrt(x ** 2 + y ** 2), 0, 1).astype(np.float32)
    return torch.from_numpy(kernel / kernel.sum())[None]


def _defocus_blur(image: Image.Image, params: tuple, rng: np.random.Generator) -> Image.Image:
    from kornia.filters import filter2d, gaussian_blur2d

    radius, alias = params
    scale = _scale(image)
    x = filter2d(_tensor(image), _disk(radius * scale), border_type="reflect")
    sigma = max(alias * scale, 1e-3)
    return _image(gaussian_blur2d(x, (3, 3), (sigma, sigma), border_type="reflect"))


def _jpeg(image: Image.Image, quality: int, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _low_light(image: Image.Image, params: tuple, rng: np.random.Generator) -> Image.Image:
    from kornia.enhance import adjust_gamma

    gamma, photons = params
    dark = adjust_gamma(_tensor(image), gamma)[0].permute(1, 2, 0).numpy()
    exposed = rng.poisson(dark * photons).astype(np.float32) / photons
    noisy = exposed + rng.normal(scale=READ_NOISE, size=dark.shape).astype(np.float32)
    return Image.fromarray((np.clip(noisy, 0, 1) * 255.0).round().astype(np.uint8))


def _contrast(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    x = np.asarray(image, dtype=np.float32) / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return Image.fromarray((np.clip((x - means) * factor + means, 0, 1) * 255.0).round().astype(np.uint8))


def _pixelate(image: Image.Image, factor: float, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    small = image.resize((max(1, int(width * factor)), max(1, int(height * factor))), Image.BOX)
    return small.resize((width, height), Image.BOX)


_CORRUPTIONS: Dict[str, Callable[[Image.Image, object, np.random.Generator], Image.Image]] = {
    "gaussian_noise": _gaussian_noise, "motion_blur": _motion_blur, "defocus_blur": _defocus_blur,
    "jpeg_compression": _jpeg, "low_light": _low_light, "contrast": _contrast, "pixelate": _pixelate,
}
