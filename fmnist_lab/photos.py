"""Dataset images turned into photos, as a phone would take a garment lying on a light sheet.

`photo` makes an encoded photo of a 28x28 Fashion-MNIST image: the object dark on a light
background (the dataset's light-on-black, inverted), enlarged, off-centre on a large canvas,
on a plain, shadowed or textured background, with Gaussian sensor noise, saved as JPEG (or
PNG for one photo in four). It is seeded, so the tests and docs/photo_agreement.py see the
same photos.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

BACKGROUNDS = ("plain", "shadow", "texture")
# The sensor noise's standard deviation, of 255, in brightness: the same in each channel,
# which is harsher than independent noise per channel (that partly averages out in gray).
SIGMAS = (0, 4, 8, 12)
CANVASES = ((800, 600), (640, 480), (1024, 768), (600, 800))  # width x height
TINT = np.array([1.0, 0.98, 0.95])  # warm light: the sheet a little yellow


def photo(image: np.ndarray, sigma: float, background: str = "plain", seed: int = 0) -> bytes:
    """The bytes of a photo of `image` (28x28 uint8, light on black); `background` is one
    of BACKGROUNDS."""
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r} is not one of {BACKGROUNDS}")
    rng = np.random.default_rng(seed)
    width, height, top, left, side = placement(seed)
    coverage = Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC)
    alpha = np.clip(np.asarray(coverage, np.float64) / 255, 0, 1)
    paper, ink = rng.uniform(235, 250), rng.uniform(20, 60)
    scene = np.full((height, width), paper)
    if background == "texture":
        scene += _texture(rng, height, width)
    region = scene[top : top + side, left : left + side]
    region[:] = region * (1 - alpha) + ink * alpha
    if background == "shadow":
        scene *= _shade(rng, height, width)
    rgb = (scene + rng.normal(0, sigma, (height, width)))[..., None] * TINT
    out = Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    if seed % 4 == 3:
        out.save(buffer, format="PNG")
    else:
        out.save(buffer, format="JPEG", quality=int(rng.integers(75, 86)))
    return buffer.getvalue()


def placement(seed: int) -> tuple[int, int, int, int, int]:
    """Where `photo` puts the object for `seed`, whatever the background and noise: the
    canvas's width and height, then the top, left and side of the enlarged 28x28."""
    rng = np.random.default_rng([seed, 1])
    width, height = CANVASES[rng.integers(len(CANVASES))]
    side = int(rng.integers(150, 301))
    # Off-centre: anywhere on the canvas, 10 px from its edges.
    top = int(rng.integers(10, height - side - 10))
    left = int(rng.integers(10, width - side - 10))
    return width, height, top, left, side


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Noise of standard deviation about 1 whose features are about `cell` px across."""
    coarse = rng.normal(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
    big = Image.fromarray(coarse, "F").resize(
        ((width // cell + 2) * cell, (height // cell + 2) * cell), Image.Resampling.BICUBIC
    )
    return np.asarray(big, np.float64)[:height, :width]


def _texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Paper grain, fabric stripes and a mottled light: a few levels of 255 each."""
    y, x = np.mgrid[0:height, 0:width]
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 16)
    stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    return (
        rng.uniform(2, 4) * _smooth_noise(rng, height, width, 3)
        + rng.uniform(2, 4) * stripes
        + rng.uniform(3, 6) * _smooth_noise(rng, height, width, 100)
    )


def _shade(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A soft shadow to multiply the scene by: a blob (a hand, a phone) or the soft edge of
    a larger shadow, darkening the sheet by 15-30 % where deepest."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    cy, cx = rng.uniform(0, height / max(height, width)), rng.uniform(0, width / max(height, width))
    if rng.random() < 0.5:
        radius = rng.uniform(0.2, 0.4)
        profile = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * radius**2))
    else:
        angle, softness = rng.uniform(0, 2 * np.pi), rng.uniform(0.05, 0.2)
        distance = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        profile = 1 / (1 + np.exp(-distance / softness))
    return 1 - rng.uniform(0.15, 0.3) * profile
