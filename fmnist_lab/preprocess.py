"""Any common photo -> a Fashion-MNIST-like 28x28 input.

Fashion-MNIST images are light objects on a black background, grayscale, centred. A photo of a
shirt on a white table is the opposite, and rarely square. `prepare` turns PNG, JPEG, WebP or
GIF (first frame) of any size and mode into that form:

1. the first frame, transparency flattened onto a background that contrasts with the object;
2. grayscale (ITU-R 601 luma);
3. inverted when the background (the median of the border pixels) is light;
4. cropped to the object, found on a copy at most 512 px long, box-averaged and smoothed so
   that sensor noise, JPEG blocks and paper grain even out: the pixels that stand out from
   their surroundings (the copy less a heavy blur of it, so that a soft shadow or uneven light
   does not) by five times the noise and a tenth of the strongest edge, or that are more than
   half the object's contrast above the background's level, less specks apart from the rest;
5. background to black: a quadratic surface fitted to the pixels around the crop is
   subtracted, so a shadow or uneven light across the crop leaves no gray behind (the
   border's median where the crop comes within 5 % of the image's edge);
6. resized with antialiasing so the object's longer side is 28 px, keeping the aspect ratio,
   centred on a black 28x28 and stretched so that its brightest pixel is 255, all as in the
   dataset (its objects' longer side is 28 px, an odd margin's extra pixel goes before the
   object, and every image's brightest pixel is 254 or 255);
7. returned as uint8; `to_tensor` makes the float 0..1 input the logged models take (they
   normalise with the training mean and std themselves).

An image that is already 28x28 with a dark background (a Fashion-MNIST image saved as PNG)
is taken as it is, so a test-set image comes back unchanged.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from fmnist_lab.errors import UserError

if TYPE_CHECKING:
    import torch

SIZE = 28
OBJECT_SIZE = 28  # the longer side of the object after resizing, as in the dataset
MAX_PIXELS = 40_000_000  # a bigger image is refused before it is decoded (decompression bombs)
MAX_ASPECT = 20  # a longer strip is no photo of a garment, and costs work out of proportion
ANALYSIS_SIDE = 512  # the object is looked for on a copy whose longer side is this at most
SMOOTH = 1.5  # px of that copy: the Gaussian blur that evens out noise, JPEG blocks, grain
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


class ImageError(UserError):
    """Input that is not a usable image; `status` is the HTTP code the web app answers."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def open_image(source: bytes | str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open `source` (bytes or a path) as a PIL image, checking it before decoding."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise ImageError("no such file")
        source = path.read_bytes()
    if not source:
        raise ImageError("the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(source), formats=FORMATS)
        except UnidentifiedImageError:
            raise ImageError(
                "not an image this app reads (PNG, JPEG, WebP, GIF, BMP, TIFF)", 415
            ) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
            raise ImageError(f"the image has more than {limit:,} pixels", 413) from None
        except (OSError, SyntaxError, ValueError) as err:  # a damaged header
            raise ImageError(f"the image cannot be decoded ({err})", 415) from None
    width, height = image.size
    if max(width, height) > MAX_ASPECT * min(width, height):  # before any decoding
        raise ImageError(
            f"the image is {width}x{height}; its longer side may be at most {MAX_ASPECT} times "
            f"its shorter (crop it to the object)",
            422,
        )
    if width * height > max_pixels:
        raise ImageError(
            f"the image is {width}x{height} = {width * height:,} pixels; the limit is "
            f"{max_pixels:,}",
            413,
        )
    try:
        image.seek(0)  # the first frame of a GIF or animated WebP
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageError(f"the image cannot be decoded ({err})", 415) from None
    return image


def prepare(image: Image.Image) -> np.ndarray:
    """A 28x28 uint8 array, light object on black, as Fashion-MNIST images are."""
    gray = _grayscale(image)
    if gray.shape == (SIZE, SIZE) and _background(gray) < 128:
        return gray  # already in Fashion-MNIST's form
    if _background(gray) >= 128:
        gray = 255 - gray
    (top, bottom, left, right), background = _find_object(gray)
    # The crop itself is resized (its longer side to OBJECT_SIZE), then centred on black: no
    # canvas the size of the crop's longer side is ever made.
    height, width = bottom - top, right - left
    scale = OBJECT_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    crop = Image.fromarray(gray[top:bottom, left:right])
    small = np.asarray(crop.resize(size, Image.Resampling.LANCZOS), np.float32)
    # Background to black, so padding and the dataset agree; it is smooth, so taking it away
    # after resizing (at the small image's pixel centres) is as good as before, and cheaper.
    small -= background(top + (np.arange(size[1]) + 0.5) * height / size[1],
                        left + (np.arange(size[0]) + 0.5) * width / size[0])  # fmt: skip
    small = small.clip(0) * (255 / max(1.0, float(small.max())))  # as bright as a dataset image
    out = np.zeros((SIZE, SIZE), np.uint8)
    # Centred as the dataset is: an odd margin's extra pixel above or left of the object.
    top, left = (SIZE + 1 - small.shape[0]) // 2, (SIZE + 1 - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small.clip(0, 255).round()
    return out


def _find_object(
    gray: np.ndarray,
) -> tuple[tuple[int, int, int, int], Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """The object's box (top, bottom, left, right; bottom and right exclusive) in `gray`, an
    image with a dark background, and the background's level at the points (ys x xs) of
    `gray`, in pixels from its top left corner."""
    factor = -(-max(gray.shape) // ANALYSIS_SIDE)
    small = Image.fromarray(gray)
    if factor > 1:
        small = small.reduce(factor)  # box averages, which also average the sensor noise
    smooth = np.asarray(small.filter(ImageFilter.GaussianBlur(SMOOTH)), np.float32)
    # Detail: the image less its surroundings, so that a soft shadow or uneven light, which
    # change slowly, stay near 0 while the object's edges stand out.
    around = small.filter(ImageFilter.GaussianBlur(max(4 * SMOOTH, max(small.size) / 32)))
    detail = smooth - np.asarray(around, np.float32)
    # The noise: the robust standard deviation in the calmest corner (the object or a
    # shadow's edge may reach the others).
    height, width = smooth.shape
    h, w = max(4, height // 10), max(4, width // 10)
    corners = [smooth[:h, :w], smooth[:h, -w:], smooth[-h:, :w], smooth[-h:, -w:]]
    noise = 1.4826 * float(min(np.median(np.abs(c - np.median(c))) for c in corners))
    strongest = float(detail.max())
    threshold = min(max(8.0, 5 * noise, strongest / 10), strongest / 2)
    # The object: what stands out from its surroundings, or is far above the background's
    # level (the inside of an object that fills the image, which has no surroundings).
    lifted = smooth - _background(smooth)
    mask = (detail > threshold) | (lifted > max(threshold, float(lifted.max()) / 2))
    if mask.any():
        (r0, r1), (c0, c1) = _extent(mask.sum(axis=1)), _extent(mask.sum(axis=0))
    else:
        r0, r1, c0, c1 = 0, height, 0, width
    # The background: a quadratic surface fitted to what lies around the box (less what does
    # not fit it), on a grid of about 10,000 of the copy's pixels, plenty for 6 coefficients;
    # the border's level where the box comes within 5 % of the image's edge (no surroundings
    # to fit on one side).
    coef = np.array([_background(smooth), 0, 0, 0, 0, 0], np.float32)
    if min(r0, c0, height - r1, width - c1) >= max(2, round(0.05 * max(height, width))):
        outside = np.ones(smooth.shape, bool)
        outside[r0 - 2 : r1 + 2, c0 - 2 : c1 + 2] = False
        step = max(1, round((height * width / 10_000) ** 0.5))
        ys, xs = np.mgrid[0:height:step, 0:width:step]
        terms, values = _quadratic(ys / height, xs / width), smooth[::step, ::step]
        fit = outside[::step, ::step]
        for _ in range(2):
            coef = np.linalg.lstsq(terms[:, fit].T, values[fit], rcond=None)[0]
            residual = values - np.tensordot(coef, terms, 1)
            fit &= np.abs(residual) <= 4 * 1.4826 * np.median(np.abs(residual[fit])) + 1

    def background(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        # In the small copy's coordinates, where pixel (0, 0) is centred at (0, 0).
        y, x = (ys / factor - 0.5)[:, None] / height, (xs / factor - 0.5)[None, :] / width
        return np.tensordot(coef, _quadratic(y, x), 1)

    box = (r0 * factor, min(gray.shape[0], r1 * factor),
           c0 * factor, min(gray.shape[1], c1 * factor))  # fmt: skip
    return box, background


def _extent(counts: np.ndarray) -> tuple[int, int]:
    """First and last + 1 index of `counts` (the object's pixels in each row or column) with
    specks left out: a group of rows apart from the rest (by 3 or more empty rows) that holds
    under 2 % of the object's pixels, such as a few noise pixels far away."""
    nonzero = np.flatnonzero(counts)
    groups = np.split(nonzero, np.flatnonzero(np.diff(nonzero) > 3) + 1)
    kept = [g for g in groups if counts[g].sum() >= 0.02 * counts.sum()]
    kept = kept or [max(groups, key=lambda g: counts[g].sum())]  # specks only: the largest
    return int(kept[0][0]), int(kept[-1][-1]) + 1


def _quadratic(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    y, x = np.broadcast_arrays(y, x)
    return np.stack([np.ones_like(y), y, x, y * y, x * x, x * y]).astype(np.float32)


def _grayscale(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)  # a phone photo the right way up
    if (image.mode == "P" and "transparency" in image.info) or image.mode in ("LA", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        span = arr.max() - arr.min()
        arr = (arr - arr.min()) / span * 255 if span else np.zeros_like(arr)
        return arr.astype(np.uint8)
    if image.mode == "RGBA":
        rgba = np.asarray(image)
        alpha = rgba[..., 3:4].astype(np.float64) / 255
        luma = np.asarray(image.convert("RGB").convert("L"), dtype=np.float64)
        opaque = alpha[..., 0] > 0.5
        # Flatten onto a background that contrasts with the object: white behind a dark
        # object (inverted next, like a photo on white), black behind a light one.
        dark_object = not opaque.any() or luma[opaque].mean() < 128
        fill = 255.0 if dark_object else 0.0
        return (luma * alpha[..., 0] + fill * (1 - alpha[..., 0])).round().astype(np.uint8)
    return np.asarray(image.convert("L"))


def _background(gray: np.ndarray) -> int:
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return int(np.median(border))


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 28x28 arrays -> the float 0..1 batch (N x 1 x 28 x 28) the logged models take."""
    import torch

    return torch.from_numpy(np.stack(images)).float().div_(255).unsqueeze(1)


def to_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
