"""fmnist_lab.preprocess on real test-set images and on photo-like images made from them
(slow: the real data), and on bad input."""

from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from fmnist_lab import photos, preprocess
from fmnist_lab.preprocess import ImageError


@pytest.fixture(scope="module")
def test_images(data_root) -> np.ndarray:
    path = data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    return np.frombuffer(gzip.open(path).read(), np.uint8, offset=16).reshape(-1, 28, 28)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def prepared(data: bytes) -> np.ndarray:
    return preprocess.prepare(preprocess.open_image(data))


@pytest.mark.slow
def test_test_set_images_saved_as_png_come_back_unchanged(test_images):
    for image in test_images[:300]:
        assert np.array_equal(prepared(encode(Image.fromarray(image), "PNG")), image)


def object_box(arr: np.ndarray, level: int = 40) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero((arr > level).any(1)), np.flatnonzero((arr > level).any(0))
    return rows[0], rows[-1], cols[0], cols[-1]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_a_photo_dark_object_on_white_becomes_a_light_centred_object_on_black(test_images, fmt):
    # A boot, inverted (dark on white), 10x bigger, off-centre on a large light RGB canvas.
    boot = Image.fromarray(255 - test_images[0]).resize((280, 280), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (900, 600), (245, 245, 240))
    canvas.paste(boot.convert("RGB"), (520, 40))
    out = prepared(encode(canvas, fmt))
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[0].max() < 30 and out[-1].max() < 30  # black above and below the boot
    top, bottom, left, right = object_box(out)
    assert max(bottom - top, right - left) + 1 in range(26, 29)  # 28 px, as in the dataset
    centre = ((top + bottom) / 2, (left + right) / 2)
    assert all(abs(c - 13.5) <= 2 for c in centre)
    # Close to the original: the dataset image, cropped and resized the same way, correlates.
    reference = prepared(encode(Image.fromarray(test_images[0]).resize((280, 280)), "PNG"))
    corr = np.corrcoef(out.ravel().astype(float), reference.ravel().astype(float))[0, 1]
    assert corr > 0.9


def test_a_few_noise_pixels_far_from_the_object_do_not_stretch_the_crop():
    # Issue 29: a trouser photographed dark on light with sensor noise came back "Bag": 18
    # isolated noise pixels far from it passed the object threshold, the crop grew from 164
    # to 476 px and the trouser was squashed into a corner of the 28x28.
    rng = np.random.default_rng(0)
    photo = np.full((600, 800), 240.0)
    photo[380:544, 560:630] = 40  # a trouser-like bar, 164 px tall, off-centre
    photo += rng.normal(0, 8, photo.shape)
    clean = prepared(encode(Image.fromarray(photo.clip(0, 255).astype(np.uint8)), "PNG"))
    photo[rng.integers(0, 300, 18), rng.integers(0, 450, 18)] = 40  # far from the bar
    noisy = prepared(encode(Image.fromarray(photo.clip(0, 255).astype(np.uint8)), "PNG"))
    top, bottom, left, right = object_box(noisy)
    assert (top, bottom) == (0, 27) and right - left + 1 in range(11, 14)  # 164 x 70 -> 28 x 12
    assert np.array_equal(noisy, clean)


@pytest.mark.slow
@pytest.mark.parametrize("background", photos.BACKGROUNDS)
def test_photos_come_out_centred_at_every_noise_level_and_background(test_images, background):
    # Test images as photos (fmnist_lab/photos.py): dark on a light sheet, 150-300 px,
    # off-centre on a 640x480 to 1024x768 canvas, JPEG or PNG, sensor noise sigma 0-12 of 255.
    for sigma in photos.SIGMAS:
        for seed, image in enumerate(test_images[:10]):
            out = prepared(photos.photo(image, sigma, background, seed))
            # The dataset trims at 5 % of the brightest pixel: the same box, give or take 1 px.
            top, bottom, left, right = box = object_box(out, level=12)
            assert np.abs(np.subtract(box, object_box(image, level=12))).max() <= 1, (sigma, seed)
            assert max(bottom - top, right - left) + 1 in range(26, 29)  # 28 px, as in the dataset
            assert abs((top + bottom) / 2 - 13.5) <= 2 and abs((left + right) / 2 - 13.5) <= 2


CORNERS = ([0, 0, -1, -1], [0, -1, 0, -1])


@pytest.mark.slow
def test_transparency_grayscale_16_bit_and_first_gif_frame(test_images):
    shirt = test_images[1]
    # RGBA: a dark shirt on a transparent background -> flattened, light on black.
    rgba = np.zeros((56, 56, 4), np.uint8)
    big = np.asarray(Image.fromarray(shirt).resize((56, 56)))
    rgba[..., :3] = (255 - big)[..., None]
    rgba[..., 3] = np.where(big > 30, 255, 0)
    out = prepared(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[CORNERS].max() < 30 and out.max() > 150
    # A light object on transparency is flattened onto black, not lost on white.
    rgba[..., :3] = big[..., None]
    out = prepared(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert out[CORNERS].max() < 30 and out.max() > 150
    # 16-bit grayscale.
    sixteen = Image.fromarray(big.astype(np.uint16) * 257)
    assert prepared(encode(sixteen, "PNG")).max() > 150
    # GIF: the first frame is the one classified.
    frames = [Image.fromarray(shirt).convert("P"), Image.fromarray(255 - shirt).convert("P")]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.abs(prepared(gif).astype(int) - shirt).mean() < 3


def test_bad_images_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ImageError, match="empty") as err:
        preprocess.open_image(b"")
    assert err.value.status == 400
    with pytest.raises(ImageError, match="not an image") as err:
        preprocess.open_image(b"%PDF-1.4 not a picture")
    assert err.value.status == 415
    # A decompression bomb: 20,000 x 20,000 pixels in a few kB of PNG.
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="pixels") as err:
        preprocess.open_image(bomb)
    assert err.value.status == 413
    with pytest.raises(ImageError, match="limit is 1,000"):
        preprocess.open_image(encode(Image.new("L", (100, 100)), "PNG"), max_pixels=1000)
    truncated = encode(Image.new("RGB", (64, 64), (200, 10, 10)), "JPEG")[:200]
    with pytest.raises(ImageError) as err:
        preprocess.open_image(truncated)
    assert err.value.status == 415
    with pytest.raises(ImageError, match="no such file"):
        preprocess.open_image(tmp_path / "missing.png")
