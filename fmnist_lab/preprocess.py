"""Any common photo -> a Fashion-MNIST-like 28x28 input.

Fashion-MNIST images are light objects on a black background, grayscale, centred. A photo of a
shirt on a white table is the opposite, and rarely square. `prepare` turns PNG, JPEG, WebP or
GIF (first frame) of any size and mode into that form:

1. the first frame, transparency flattened onto a background that contrasts with the object;
2. grayscale (ITU-R 601 luma);
3. inverted when the background (the median of the border pixels) is light;
4. cropped to the object's bounding box (pixels clearly brighter than the background);
5. resized with antialiasing so the object's longer side is 26 px, keeping the aspect ratio,
   and centred on a black 28x28;
6. returned as uint8; `to_tensor` makes the float 0..1 input the logged models take (they
   normalise with the training mean and std themselves).

An image that is already 28x28 with a dark background (a Fashion-MNIST image saved as PNG)
is taken as it is, so a test-set image comes back unchanged.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist_lab.errors import UserError

if TYPE_CHECKING:
    import torch

SIZE = 28
OBJECT_SIZE = 26  # the longer side of the object after resizing
MAX_PIXELS = 40_000_000  # a bigger image is refused before it is decoded (decompression bombs)
MAX_ASPECT = 20  # a longer strip is no photo of a garment, and costs work out of proportion
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
    background = _background(gray)
    if gray.shape == (SIZE, SIZE) and background < 128:
        return gray  # already in Fashion-MNIST's form
    if background >= 128:
        gray = 255 - gray
        background = _background(gray)
    # The object: pixels clearly brighter than the background.
    contrast = int(gray.max()) - background
    mask = gray > background + max(16, contrast // 5)
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    # Background to black, so padding and the dataset agree.
    gray = np.clip(gray.astype(np.int16) - background, 0, 255).astype(np.uint8)
    # The crop itself is resized (its longer side to OBJECT_SIZE), then centred on black: no
    # canvas the size of the crop's longer side is ever made.
    height, width = gray.shape
    scale = OBJECT_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))
    out = np.zeros((SIZE, SIZE), np.uint8)
    top, left = (SIZE - small.shape[0]) // 2, (SIZE - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


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
