"""Small generated stand-ins for Fashion-MNIST and MNIST, for the fast test tier.

Class-dependent 28x28 images (a class's bright bar, a shifted copy of it and noise), so that
a tiny model learns something in one epoch; no test claims an accuracy on them. The files
are laid out like shared/data (`fashion-mnist/*.gz`, `mnist/*.gz`, plus the Kaggle CSV form),
and also extracted into torchvision's own cache layout (`<cache>/FashionMNIST/raw/`).

The .gz files fail `fmnist_lab.data`'s MD5 check on purpose: they are not the official
files, and the check must keep refusing anything else. A test loads them the way a user
loads a dataset torchvision has downloaded before: data.root unset, data.cache_dir holding
the extracted files (torchvision trusts its cache).
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

N_TRAIN, N_TEST = 6000, 1000  # > data.val_size's default 5,000; 600 and 100 per class
N_CSV_TRAIN, N_CSV_TEST = 600, 200
FOLDERS = {"fashion_mnist": ("fashion-mnist", "FashionMNIST"), "mnist": ("mnist", "MNIST")}


@dataclass(frozen=True)
class SmallData:
    root: Path  # like shared/data: fashion-mnist/, mnist/ and the two CSV files
    cache: Path  # data.cache_dir with both datasets already extracted

    def cfg_overrides(self) -> list[str]:
        """Hydra overrides that load these files (data.root unset, the cache holding them)."""
        return ["data.root=null", f"data.cache_dir={self.cache}"]


def images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` uint8 images (n x 28 x 28) and labels, every class `n / 10` times, shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    x = rng.integers(0, 60, size=(n, 28, 28), dtype=np.int64)
    rows = 3 + 2 * labels + rng.integers(-1, 2, size=n)  # class k: a bar near row 3 + 2k
    cols = rng.integers(4, 10, size=n)
    for i in range(n):
        x[i, rows[i] : rows[i] + 3, cols[i] : cols[i] + 14] += 160
        x[i, 4:24, 4 + 2 * labels[i]] += 80  # and a faint column near 4 + 2k
    return np.clip(x, 0, 255).astype(np.uint8), labels


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding: magic (0, 0, type 0x08 = ubyte, number of dimensions), sizes, data."""
    header = struct.pack(">4B", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    rows = np.concatenate([y[:, None].astype(np.int64), x.reshape(len(y), -1)], 1)
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=header, comments="")


def write(base: Path) -> SmallData:
    """Write both datasets under `base` (root/ and cache/)."""
    data = SmallData(base / "root", base / "cache")
    for seed, (name, (folder, torch_name)) in enumerate(FOLDERS.items()):
        gz, raw = data.root / folder, data.cache / torch_name / "raw"
        gz.mkdir(parents=True)
        raw.mkdir(parents=True)
        train, test = images(N_TRAIN, 2 * seed), images(N_TEST, 2 * seed + 1)
        for split, (x, y) in (("train", train), ("t10k", test)):
            for kind, array in (("images-idx3", x), ("labels-idx1", y)):
                content = idx_bytes(array)
                (raw / f"{split}-{kind}-ubyte").write_bytes(content)
                with gzip.open(gz / f"{split}-{kind}-ubyte.gz", "wb", compresslevel=1) as f:
                    f.write(content)
        if name == "fashion_mnist":
            write_csv(data.root / "fashion-mnist_train.csv", *(a[:N_CSV_TRAIN] for a in train))
            write_csv(data.root / "fashion-mnist_test.csv", *(a[:N_CSV_TEST] for a in test))
    return data
