"""How often a model's answer on a photo of a test image agrees with its answer on the image
itself, for each sensor noise level and background of `fmnist_lab.photos`; the current
`preprocess.prepare` side by side with the one before issue 29 (kept below).

    python docs/photo_agreement.py --tracking-uri sqlite:////path/to/mlflow.db [--n 200]

Prints one row per background and noise level: the share of the first N test images whose
prepared photo gets the same top class as the original, old and new.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

from fmnist_lab import photos, preprocess

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # beside the checkout


def old_prepare(image) -> np.ndarray:
    """`preprocess.prepare` before issue 29: the bounding box of every pixel above a global
    threshold, so a few noise pixels or a shadow stretch the crop."""
    gray = preprocess._grayscale(image)
    background = preprocess._background(gray)
    if gray.shape == (28, 28) and background < 128:
        return gray
    if background >= 128:
        gray = 255 - gray
        background = preprocess._background(gray)
    contrast = int(gray.max()) - background
    mask = gray > background + max(16, contrast // 5)
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        gray = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    gray = np.clip(gray.astype(np.int16) - background, 0, 255).astype(np.uint8)
    height, width = gray.shape
    scale = 26 / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))
    out = np.zeros((28, 28), np.uint8)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/fmnist-fashion_mnist@champion")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--data", default=os.environ.get("FMNIST_LAB_DATA", SHARED_DATA),
                        help="the folder with fashion-mnist/t10k-images-idx3-ubyte.gz")  # fmt: skip
    parser.add_argument("--n", type=int, default=200, help="test images per row")
    args = parser.parse_args()
    import mlflow

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    model = mlflow.pyfunc.load_model(args.model)
    path = Path(args.data) / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    images = np.frombuffer(gzip.open(path).read(), np.uint8, offset=16).reshape(-1, 28, 28)
    images = images[: args.n]

    def classes(prepared: list[np.ndarray]) -> np.ndarray:
        return np.asarray(model.predict(preprocess.to_tensor(prepared).numpy())).argmax(1)

    truth = classes(list(images))
    print(f"model {args.model}, first {args.n} test images: share of photos whose top class "
          "is the original's")  # fmt: skip
    print(f"{'background':<12}{'sigma':>6}{'old':>8}{'new':>8}")
    for background in photos.BACKGROUNDS:
        for sigma in photos.SIGMAS:
            shots = [preprocess.open_image(photos.photo(image, sigma, background, seed=i))
                     for i, image in enumerate(images)]  # fmt: skip
            old = (classes([old_prepare(s) for s in shots]) == truth).mean()
            new = (classes([preprocess.prepare(s) for s in shots]) == truth).mean()
            print(f"{background:<12}{sigma:>6}{old:>8.1%}{new:>8.1%}")


if __name__ == "__main__":
    main()
