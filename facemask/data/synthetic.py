"""Drawn face-mask images, deterministic by (seed, index), for runs and tests that cannot download data.

Positives wear a surgical, cloth or respirator mask (varied colour, pattern, fit, ear loops or
straps). Negatives are chosen to share the cues a lazy model would latch onto: scarves and neck
gaiters in mask colours under the chin, beards over the jaw, hands in front of the mouth, and
mask-coloured shapes in the background. Both classes share the same distributions of face, hair,
background, lighting, pose and noise, so only what covers the mouth and nose tells them apart.

Two styles: "studio" (the default: centred, upright, evenly lit portraits) and "street", the
same faces as a doorway camera sees them (smaller, off-centre, tilted, strong colour casts,
noisier and often blurred): a shifted set for transfer experiments (configs/quickstart-lora.yaml).
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ["with_mask", "without_mask"]
WITH_MASK, WITHOUT_MASK = 0, 1

Color = Tuple[int, int, int]
STYLES = ("studio", "street")
# "mixed": studio and street in turn, two by two (labels alternate one by one, so each style holds
# both classes equally), each image the one its own style draws at that index.
MIXED = "mixed"

SKIN_TONES: List[Color] = [
    (255, 224, 196), (241, 194, 160), (224, 172, 130), (198, 134, 96),
    (168, 108, 72), (141, 85, 52), (110, 64, 40), (80, 48, 30),
]
HAIR_COLORS: List[Color] = [
    (20, 16, 14), (60, 38, 24), (110, 74, 40), (200, 160, 90), (160, 70, 30), (150, 150, 150), (235, 235, 230),
]
# Colours both masks and scarves are drawn from, so colour alone never gives the label away.
FABRIC_COLORS: List[Color] = [
    (170, 210, 235), (245, 245, 245), (30, 30, 35), (235, 170, 190), (120, 190, 150), (200, 60, 60),
    (60, 80, 160), (240, 200, 80), (130, 90, 150), (210, 195, 170), (90, 90, 95), (250, 130, 40),
]


def _jitter(rng: random.Random, color: Color, amount: int) -> Color:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in color)  # type: ignore[return-value]


def _shade(color: Color, factor: float) -> Color:
    return tuple(max(0, min(255, int(c * factor))) for c in color)  # type: ignore[return-value]


def _background(rng: random.Random, size: int) -> Image.Image:
    base = _jitter(rng, (rng.randint(40, 230), rng.randint(40, 230), rng.randint(40, 230)), 10)
    img = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(img)
    style = rng.choice(["solid", "gradient", "wall", "clutter", "clutter"])
    if style == "gradient":
        other = _jitter(rng, base, 70)
        for y in range(size):
            t = y / size
            draw.line([(0, y), (size, y)], fill=tuple(int(a * (1 - t) + b * t) for a, b in zip(base, other)))
    elif style == "wall":
        split = rng.randint(size // 2, size)
        draw.rectangle([0, split, size, size], fill=_jitter(rng, base, 80))
    elif style == "clutter":
        for _ in range(rng.randint(2, 7)):
            x0, y0 = rng.randint(-size // 4, size), rng.randint(-size // 4, size)
            w, h = rng.randint(size // 10, size // 2), rng.randint(size // 10, size // 2)
            fill = rng.choice(FABRIC_COLORS) if rng.random() < 0.25 else _jitter(rng, base, 90)
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape([x0, y0, x0 + w, y0 + h], fill=fill)
    return img


def _pattern(rng: random.Random, box, color: Color, mask_layer: Image.Image) -> None:
    """Stripes, dots or checks clipped to the fabric shape already drawn in `mask_layer`."""
    kind = rng.choice(["stripes", "dots", "checks"])
    x0, y0, x1, y1 = box
    accent = _jitter(rng, rng.choice(FABRIC_COLORS), 20)
    step = max(4, int((x1 - x0) / rng.randint(4, 8)))
    overlay = Image.new("RGBA", mask_layer.size, (0, 0, 0, 0))
    od = ImageDraw.Draw(overlay)
    if kind == "stripes":
        for x in range(int(x0) - int(y1 - y0), int(x1), step):
            od.line([(x, y0), (x + (y1 - y0), y1)], fill=accent + (255,), width=max(2, step // 3))
    elif kind == "dots":
        r = max(2, step // 4)
        for x in range(int(x0), int(x1), step):
            for y in range(int(y0), int(y1), step):
                od.ellipse([x - r, y - r, x + r, y + r], fill=accent + (255,))
    else:
        for x in range(int(x0), int(x1), 2 * step):
            od.rectangle([x, y0, x + step, y1], fill=accent + (140,))
        for y in range(int(y0), int(y1), 2 * step):
            od.rectangle([x0, y, x1, y + step], fill=accent + (140,))
    alpha = Image.composite(overlay.getchannel("A"), Image.new("L", overlay.size, 0), mask_layer.getchannel("A"))
    overlay.putalpha(alpha)
    mask_layer.alpha_composite(overlay)


def _distinct(rng: random.Random, palette: List[Color], avoid: Color, jitter: int) -> Color:
    """A palette colour, jittered, that stands out from `avoid` (the skin), as a person would see it."""
    for _ in range(20):
        color = _jitter(rng, rng.choice(palette), jitter)
        if sum(abs(a - b) for a, b in zip(color, avoid)) > 90:
            return color
    return color


def _draw_mask(layer: Image.Image, rng: random.Random, face, skin: Color) -> Image.Image:
    """Draws the mask onto `layer`; returns the fabric's alpha (where the mask body is)."""
    cx, cy, fw, fh = face
    kind = rng.choice(["surgical", "cloth", "respirator"])
    # Fit: most masks cover the nose; some sit below it, which still counts as wearing one.
    top = cy + fh * (rng.uniform(-0.02, 0.08) if rng.random() < 0.75 else rng.uniform(0.12, 0.2))
    bottom = cy + fh * rng.uniform(0.44, 0.56)
    half = fw * rng.uniform(0.47, 0.55)
    fabric = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    fd = ImageDraw.Draw(fabric)
    lw = max(1, int(fw / 40))
    if kind == "surgical":
        color = _distinct(rng, [(170, 210, 235), (245, 245, 245), (30, 30, 35), (235, 170, 190), (120, 190, 150)],
                          skin, 12)
        inset = half * 0.18
        fd.polygon([(cx - half, top + inset), (cx - half + inset, top), (cx + half - inset, top),
                    (cx + half, top + inset), (cx + half, bottom - inset), (cx + half - inset, bottom),
                    (cx - half + inset, bottom), (cx - half, bottom - inset)], fill=color + (255,))
        for k in range(1, 4):
            y = top + (bottom - top) * k / 4
            fd.line([(cx - half * 0.9, y), (cx + half * 0.9, y)], fill=_shade(color, 0.8) + (255,), width=lw)
        loop = (235, 235, 235) if sum(color) < 200 or rng.random() < 0.7 else _shade(color, 0.9)
    elif kind == "cloth":
        color = _distinct(rng, FABRIC_COLORS, skin, 20)
        fd.chord([cx - half, top - (bottom - top) * 0.35, cx + half, bottom + (bottom - top) * 0.15], 0, 180,
                 fill=color + (255,))
        fd.rectangle([cx - half, top, cx + half, top + (bottom - top) * 0.4], fill=color + (255,))
        if rng.random() < 0.35:
            _pattern(rng, (cx - half, top, cx + half, bottom), color, fabric)
        loop = _shade(color, 0.85)
    else:
        color = _distinct(rng, [(240, 240, 235), (200, 200, 205), (235, 225, 180), (60, 60, 65)], skin, 10)
        fd.ellipse([cx - half * 0.95, top - (bottom - top) * 0.1, cx + half * 0.95, bottom + (bottom - top) * 0.1],
                   fill=color + (255,))
        fd.line([(cx, top), (cx, bottom)], fill=_shade(color, 0.75) + (255,), width=lw)
        if rng.random() < 0.5:
            r = fw * 0.08
            vy = top + (bottom - top) * 0.6
            vx = cx + rng.choice([-1, 1]) * half * 0.35
            fd.ellipse([vx - r, vy - r, vx + r, vy + r], fill=_shade(color, 0.6) + (255,))
        loop = _shade(color, 0.7)
    draw = ImageDraw.Draw(layer)
    # Ear loops (surgical, cloth) or straps (respirator) run from the mask edges towards the ears.
    ear_y = cy - fh * 0.02
    for side in (-1, 1):
        ex = cx + side * fw * 0.52
        draw.line([(cx + side * half, top + (bottom - top) * 0.2), (ex, ear_y)], fill=loop, width=lw)
        draw.line([(cx + side * half, bottom - (bottom - top) * 0.2), (ex, ear_y + fh * 0.05)], fill=loop, width=lw)
    layer.alpha_composite(fabric)
    return fabric.getchannel("A")


def _draw_hand(draw: ImageDraw.ImageDraw, rng: random.Random, face, skin: Color) -> None:
    cx, cy, fw, fh = face
    hx = cx + rng.uniform(-0.25, 0.25) * fw
    hy = cy + fh * rng.uniform(0.3, 0.55)
    hw, hh = fw * rng.uniform(0.3, 0.45), fh * rng.uniform(0.25, 0.35)
    hand = _shade(_jitter(rng, skin, 10), rng.uniform(0.9, 1.1))
    draw.ellipse([hx - hw / 2, hy - hh / 3, hx + hw / 2, hy + hh], fill=hand)
    for k in range(4):
        fx = hx - hw / 2 + hw * (k + 0.5) / 4
        draw.line([(fx, hy - hh / 3), (fx, hy - hh * rng.uniform(0.7, 0.95))], fill=hand, width=max(2, int(hw / 6)))
    draw.rectangle([hx - hw / 3, hy + hh * 0.8, hx + hw / 3, hy + hh * 2.5], fill=hand)


def draw_face(rng: random.Random, size: int, wearing_mask: bool, style: str = "studio",
              regions: Optional[Dict[str, np.ndarray]] = None, occluders: float = 0.0) -> Image.Image:
    """One face on a background; `size` is the side of the returned square RGB image. A `regions`
    dict is filled with where things were drawn, as size x size booleans: "face" (the head's
    ellipse) and, on positives, "mask" (the mask's fabric; ear loops left out): what a model
    should look at, for checking explanation maps. The drawing is the same with or without it.
    `occluders`: the share of faces without a mask that get a hand, scarf or phone over the mouth
    and nose (data/occluders.py, placed from the face's drawn landmarks), still labelled without
    a mask: "something covers the mouth" is not "a mask". At 0 nothing is drawn or drawn for."""
    street = style == "street"
    scale = 2  # drawn at twice the size and downsampled, for smooth edges
    big = size * scale
    img = _background(rng, big)
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)

    fw = big * (rng.uniform(0.40, 0.48) if street else rng.uniform(0.48, 0.56))
    fh = fw * rng.uniform(1.12, 1.42)
    shift = 0.10 if street else 0.05
    cx = big / 2 + rng.uniform(-shift, shift) * big
    cy = big / 2 + (rng.uniform(-0.12, 0.08) if street else rng.uniform(-0.06, 0.0)) * big
    face = (cx, cy, fw, fh)
    skin = _jitter(rng, rng.choice(SKIN_TONES), 12)
    hair = _jitter(rng, rng.choice(HAIR_COLORS), 10)
    clothes = _jitter(rng, rng.choice(FABRIC_COLORS + [(90, 60, 40), (40, 60, 40)]), 25)

    # Shoulders and neck, then long hair behind the head.
    draw.ellipse([cx - fw * 1.3, cy + fh * 0.7, cx + fw * 1.3, cy + fh * 2.2], fill=clothes)
    draw.rectangle([cx - fw * 0.2, cy + fh * 0.3, cx + fw * 0.2, cy + fh * 0.8], fill=_shade(skin, 0.9))
    hair_style = rng.choice(["none", "short", "long", "curly", "short"])
    if hair_style == "long":
        draw.ellipse([cx - fw * 0.65, cy - fh * 0.6, cx + fw * 0.65, cy + fh * 0.75], fill=hair)
    for side in (-1, 1):
        ex = cx + side * fw * 0.5
        draw.ellipse([ex - fw * 0.08, cy - fh * 0.1, ex + fw * 0.08, cy + fh * 0.1], fill=_shade(skin, 0.92))
    draw.ellipse([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2], fill=skin)
    if hair_style in ("short", "long"):
        draw.chord([cx - fw * 0.55, cy - fh * 0.6, cx + fw * 0.55, cy + fh * 0.1], 180, 360, fill=hair)
    elif hair_style == "curly":
        for _ in range(14):
            a = rng.uniform(math.pi, 2 * math.pi)
            r = fw * rng.uniform(0.1, 0.16)
            x, y = cx + math.cos(a) * fw * 0.5, cy - fh * 0.15 + math.sin(a) * fh * 0.4
            draw.ellipse([x - r, y - r, x + r, y + r], fill=hair)

    # Eyes, brows, nose, mouth.
    eye_y = cy - fh * rng.uniform(0.02, 0.1)
    eye_dx = fw * rng.uniform(0.18, 0.24)
    er = fw * rng.uniform(0.06, 0.09)
    iris = rng.choice([(60, 40, 20), (40, 90, 140), (60, 120, 70), (20, 20, 20)])
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - er, eye_y - er * 0.6, ex + er, eye_y + er * 0.6], fill=(245, 245, 245))
        draw.ellipse([ex - er * 0.45, eye_y - er * 0.45, ex + er * 0.45, eye_y + er * 0.45], fill=iris)
        draw.line([(ex - er, eye_y - er * 1.4), (ex + er, eye_y - er * 1.6 * rng.uniform(0.8, 1.1))],
                  fill=_shade(hair, 0.8), width=max(2, int(er / 3)))
    if rng.random() < 0.2:
        for side in (-1, 1):
            ex = cx + side * eye_dx
            draw.ellipse([ex - er * 1.5, eye_y - er * 1.2, ex + er * 1.5, eye_y + er * 1.2], outline=(30, 30, 30),
                         width=max(2, int(er / 4)))
    draw.line([(cx, eye_y + er), (cx - fw * 0.04, cy + fh * 0.12), (cx + fw * 0.03, cy + fh * 0.14)],
              fill=_shade(skin, 0.75), width=max(2, int(fw / 50)))
    mouth_y = cy + fh * rng.uniform(0.25, 0.3)
    mw = fw * rng.uniform(0.12, 0.22)
    lips = _shade(_jitter(rng, (190, 90, 90), 25), 0.6 + 0.4 * sum(skin) / 765)
    if rng.random() < 0.5:
        draw.arc([cx - mw, mouth_y - fh * 0.08, cx + mw, mouth_y + fh * 0.05], 20, 160, fill=lips,
                 width=max(2, int(fw / 30)))
    else:
        draw.ellipse([cx - mw, mouth_y - fh * 0.03, cx + mw, mouth_y + fh * 0.04], fill=lips)

    # Hard negatives, and the same accessories on positives so they are not negative-only cues.
    if rng.random() < (0.25 if not wearing_mask else 0.1):
        draw.chord([cx - fw * 0.5, cy - fh * 0.4, cx + fw * 0.5, cy + fh * 0.52], 10, 170, fill=hair)
        draw.ellipse([cx - mw, mouth_y - fh * 0.03, cx + mw, mouth_y + fh * 0.04], fill=lips)
    if rng.random() < (0.25 if not wearing_mask else 0.1):
        scarf = _jitter(rng, rng.choice(FABRIC_COLORS), 20)
        top = cy + fh * rng.uniform(0.48, 0.58)
        draw.rounded_rectangle([cx - fw * 0.6, top, cx + fw * 0.6, top + fh * rng.uniform(0.25, 0.4)],
                               radius=int(fw * 0.1), fill=scarf)
        if rng.random() < 0.5:
            scarf_layer = Image.new("RGBA", layer.size, (0, 0, 0, 0))
            ImageDraw.Draw(scarf_layer).rectangle([cx - fw * 0.6, top, cx + fw * 0.6, top + fh * 0.4],
                                                  fill=scarf + (255,))
            _pattern(rng, (cx - fw * 0.6, top, cx + fw * 0.6, top + fh * 0.4), scarf, scarf_layer)
            layer.alpha_composite(scarf_layer)
    fabric = _draw_mask(layer, rng, face, skin) if wearing_mask else None
    if rng.random() < (0.2 if not wearing_mask else 0.04):
        _draw_hand(ImageDraw.Draw(layer), rng, face, skin)

    tilt = 18 if street else 8
    angle = rng.uniform(-tilt, tilt)
    layer = layer.rotate(angle, resample=Image.BILINEAR, center=(cx, cy))
    img.paste(layer, (0, 0), layer)
    if occluders and not wearing_mask and rng.random() < occluders:
        points = [(cx - eye_dx, eye_y), (cx + eye_dx, eye_y), (cx - fw * 0.005, cy + fh * 0.13),
                  (cx - mw, mouth_y), (cx + mw, mouth_y)]
        img = _occluded(img, rng, points, (cx, cy), angle)
    img = img.resize((size, size), Image.LANCZOS)
    if regions is not None:
        head = Image.new("L", (big, big), 0)
        ImageDraw.Draw(head).ellipse([cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2], fill=255)
        drawn = {"face": head, **({"mask": fabric} if fabric is not None else {})}
        for name, alpha in drawn.items():
            placed = alpha.rotate(angle, resample=Image.BILINEAR, center=(cx, cy)).resize((size, size), Image.BILINEAR)
            regions[name] = np.asarray(placed) >= 128

    # Lighting: global exposure, a directional falloff, a colour cast, then sensor noise.
    arr = np.asarray(img, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    angle = rng.uniform(0, 2 * math.pi)
    falloff = 1 + rng.uniform(0, 0.35) * ((xx - 0.5) * math.cos(angle) + (yy - 0.5) * math.sin(angle))
    spread = 0.25 if street else 0.1
    cast = np.array([rng.uniform(1 - spread, 1 + spread) for _ in range(3)], dtype=np.float32)
    arr = arr * (rng.uniform(0.5, 1.3) if street else rng.uniform(0.75, 1.2)) * falloff[..., None] * cast
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    noise = noise_rng.normal(0, rng.uniform(3, 9) if street else rng.uniform(1, 5), arr.shape)
    img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
    if rng.random() < (0.35 if street else 0.1):
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2 if street else 1.0)))
    return img


def _occluded(img: Image.Image, rng: random.Random, points: List[Tuple[float, float]], centre: Tuple[float, float],
              angle: float) -> Image.Image:
    """`img` with one of data/occluders.py's kinds over the face whose unrotated landmarks are
    `points`, turned as the face was (PIL's rotate: counter-clockwise by `angle` degrees)."""
    from facemask.data.occluders import KINDS, draw_occluder

    theta = math.radians(angle)
    cx, cy = centre
    turned = [(cx + (x - cx) * math.cos(theta) + (y - cy) * math.sin(theta),
               cy - (x - cx) * math.sin(theta) + (y - cy) * math.cos(theta)) for x, y in points]
    kind = KINDS[rng.randrange(len(KINDS))]
    return draw_occluder(img, np.array(turned), kind, np.random.default_rng(rng.getrandbits(32)))


def sample(seed: int, index: int, size: int, style: str = "studio",
           regions: Optional[Dict[str, np.ndarray]] = None, occluders: float = 0.0) -> Tuple[Image.Image, int]:
    """Image and label number `index` of the set with this seed; independent of how many are drawn.
    `regions`, `occluders`: see draw_face."""
    if style == MIXED:
        style = STYLES[(index // 2) % 2]
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}: use {', '.join(STYLES)} or {MIXED}")
    key = f"facemask-synthetic:{seed}:{index}" + ("" if style == "studio" else f":{style}")
    rng = random.Random(key)
    label = WITH_MASK if index % 2 == 0 else WITHOUT_MASK
    return draw_face(rng, size, wearing_mask=label == WITH_MASK, style=style, regions=regions,
                     occluders=occluders), label


def write_image_folder(directory: str | Path, num_images: int, size: int, seed: int, fmt: str = "mixed",
                       style: str = "studio", occluders: float = 0.0) -> Path:
    """Write the set as an image folder (one sub-folder per class) of PNG and/or JPEG files."""
    if fmt not in ("png", "jpg", "mixed"):
        raise ValueError(f"unknown image format {fmt!r}: use png, jpg or mixed")
    root = Path(directory)
    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        image, label = sample(seed, index, size, style, occluders=occluders)
        # Format by index, not by class: a class-dependent format would be a shortcut to learn.
        ext = fmt if fmt != "mixed" else ("jpg" if (index // 2) % 2 == 0 else "png")
        path = root / CLASS_NAMES[label] / f"{index:06d}.{ext}"
        if ext == "jpg":
            image.save(path, quality=random.Random(f"jpeg:{seed}:{index}").randint(70, 95))
        else:
            image.save(path)
    return root


PROBE_IMAGES = 64


def probe_digest(seed: int, size: int, style: str = "studio", occluders: float = 0.0) -> str:
    """A short hash of the first PROBE_IMAGES images and labels a seed draws: the drawn set by its
    content, so an edit of this file that draws the same pixels keeps it (generator_digest does not)."""
    import hashlib

    h = hashlib.sha256()
    for index in range(PROBE_IMAGES):
        image, label = sample(seed, index, size, style, occluders=occluders)
        h.update(np.asarray(image, dtype=np.uint8).tobytes())
        h.update(bytes([label]))
    return h.hexdigest()[:16]


def generator_digest() -> str:
    """A short hash of this file: a drawn set is the same set only if it was drawn by the same code."""
    import hashlib
    from pathlib import Path

    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _encoded_samples(seed: int, start: int, stop: int, size: int, style: str = "studio",
                     occluders: float = 0.0) -> List[tuple]:
    out = []
    for index in range(start, stop):
        image, label = sample(seed, index, size, style, occluders=occluders)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
        out.append((buffer.getvalue(), label))
    return out


# Beside a kept drawn set: {file: XXH3-64 checksum} of the files datasets wrote.
CHECKSUMS = "checksums.json"


def stored_synthetic_dataset(num_images: int, size: int, seed: int, root: Path,
                             style: str = "studio", occluders: float = 0.0) -> datasets.Dataset:
    """The drawn set, drawn once and kept under `root` by its parameters and the generator's source:
    a second run, or the other processes of a distributed one, load it instead of drawing again.
    Its files' checksums are kept beside them (checksums.json) and compared on every load."""
    import json

    from facemask.data.storage import Damaged, check_checksums, checksums, discard, first_line, mark_used, staged

    styled = ("" if style == "studio" else f"-{style}") + (f"-occluders{occluders:g}" if occluders else "")
    folder = root / f"synthetic-{num_images}x{size}px-seed{seed}{styled}-{generator_digest()}"
    if folder.is_dir():
        try:
            check_checksums(folder, json.loads((folder / CHECKSUMS).read_text(encoding="utf-8")))
            kept = datasets.load_from_disk(str(folder))
            if len(kept) != num_images:
                raise ValueError(f"it holds {len(kept)} images, not {num_images}")
            kept.with_format("arrow")[len(kept) - 1]  # reads through to the last row
            mark_used(folder / "dataset_info.json")
            return kept
        except (OSError, ValueError, Damaged) as err:  # pyarrow's errors are OSError / ValueError
            discard(folder, first_line(err) if not isinstance(err, Damaged) else str(err))
    ds = synthetic_dataset(num_images, size, seed, style, occluders)
    try:
        with staged(folder) as staging:
            ds.save_to_disk(str(staging))
            (staging / CHECKSUMS).write_text(json.dumps(checksums(staging)), encoding="utf-8")
    except OSError:
        pass  # another process stored it first, or the folder is read-only: the drawn set serves
    return ds


def synthetic_dataset(num_images: int, size: int, seed: int, style: str = "studio",
                      occluders: float = 0.0) -> datasets.Dataset:
    """The drawn set as PNG bytes, drawn on every core (samples depend only on seed and index)."""
    from facemask.processes import die_with_parent

    chunk = 250
    starts = range(0, num_images, chunk)
    workers = min(os.cpu_count() or 1, 8)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        parts = pool.map(_encoded_samples,
                         *zip(*[(seed, s, min(s + chunk, num_images), size, style, occluders) for s in starts]))
        samples = [item for part in parts for item in part]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    images = [{"bytes": data, "path": None} for data, _ in samples]
    return datasets.Dataset.from_dict({"image": images, "label": [label for _, label in samples]}, features=features)
