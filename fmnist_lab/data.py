"""Datasets as uint8 tensors: IDX files through torchvision, the Kaggle CSV form, stratified splits.

Data flows one way: files -> `Splits` (CPU uint8 tensors) -> `DataModule` puts them on the
training device -> `DeviceBatches` slices batches from them, with no per-sample Python work.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.datasets.utils import check_integrity

from fmnist_lab.datasets import CLASSES, DATA_ENV, FASHION_CLASSES, FOLDERS, PRETTY
from fmnist_lab.errors import UserError

# Per IDX dataset: the torchvision class, class names, and the folders its files may sit in.
IDX_DATASETS = {
    name: (cls, CLASSES[name], FOLDERS[name])
    for name, cls in (("fashion_mnist", FashionMNIST), ("mnist", MNIST))
}


@dataclass
class Splits:
    """Train / validation / test images (uint8, N x 1 x 28 x 28) and labels (int64, N)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str] = field(default_factory=lambda: list(FASHION_CLASSES))
    mean: float = field(init=False)
    std: float = field(init=False)

    def __post_init__(self) -> None:
        # Pixel mean and std of the training split on the 0..1 scale, exact, from the
        # 256-bin histogram rather than a float copy of every image.
        counts = torch.bincount(self.train_x.flatten().long(), minlength=256).double()
        values = torch.arange(256, dtype=torch.float64) / 255
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / (n - 1)
        self.mean, self.std = mean.item(), var.sqrt().item()


def load_splits(cfg) -> Splits:
    """Load the dataset named by `cfg.name` and carve the validation split out of training.

    `cfg` is the `data` config group: name, root, cache_dir, val_size, split_seed,
    train_fraction (and train_file / test_file for the CSV form).
    """
    (train_x, train_y), (test_x, test_y), classes = load_dataset(cfg)
    if not isinstance(cfg.val_size, int) or not 0 <= cfg.val_size < len(train_y):
        raise UserError(
            f"data.val_size={cfg.val_size} must be a whole number of images between 0 and "
            f"{len(train_y) - 1}"
        )
    train_idx, val_idx = stratified_split(train_y, cfg.val_size, cfg.split_seed)
    train_idx = train_idx[_fraction(train_y[train_idx], cfg)]
    return Splits(
        train_x[train_idx], train_y[train_idx], train_x[val_idx], train_y[val_idx],
        test_x, test_y, classes,
    )  # fmt: skip


def fold_splits(cfg, folds: int) -> Iterator[Splits]:
    """Stratified k-fold cross-validation over the training images: fold i validates on its
    own images and trains on the others. `data.train_fraction` subsets the images first;
    `data.val_size` does not apply (the folds replace it)."""
    if not isinstance(folds, int) or folds < 2:
        raise UserError(f"folds={folds} must be a whole number of at least 2")
    (train_x, train_y), (test_x, test_y), classes = load_dataset(cfg)
    keep = _fraction(train_y, cfg)
    train_x, train_y = train_x[keep], train_y[keep]
    for held in stratified_folds(train_y, folds, cfg.split_seed):
        mask = torch.ones(len(train_y), dtype=torch.bool)
        mask[held] = False
        yield Splits(train_x[mask], train_y[mask], train_x[held], train_y[held],
                     test_x, test_y, classes)  # fmt: skip


@dataclass
class IdxData:
    """An IDX dataset (conf/data/fashion_mnist.yaml, mnist.yaml): where its four .gz files
    are, and how its splits and batches are made."""

    name: str
    root: str | None = None
    cache_dir: str = "~/.cache/fmnist_lab"
    val_size: int = 5000
    split_seed: int = 0
    train_fraction: float = 1.0
    batch_size: int = 128
    eval_batch_size: int = 1000

    def images(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor],
                              list[str]]:  # fmt: skip
        """((train_x, train_y), (test_x, test_y), class names)."""
        if self.name not in IDX_DATASETS:
            raise UserError(f"unknown dataset '{self.name}'; choose one of: "
                            f"{', '.join([*IDX_DATASETS, 'fashion_mnist_csv'])}")  # fmt: skip
        return (*_load_idx(self.name, self.root, self.cache_dir), IDX_DATASETS[self.name][1])


@dataclass
class CsvData(IdxData):
    """Fashion-MNIST in Kaggle's CSV form (conf/data/fashion_mnist_csv.yaml)."""

    train_file: str = "fashion-mnist_train.csv"
    test_file: str = "fashion-mnist_test.csv"

    def images(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor],
                              list[str]]:  # fmt: skip
        root = _data_root(self.root)
        if root is None:
            raise UserError(
                f"the CSV dataset needs a directory: set data.root= or {DATA_ENV} to the folder "
                f"holding {self.train_file} and {self.test_file}"
            )
        return read_csv(root / self.train_file), read_csv(root / self.test_file), FASHION_CLASSES


def load_dataset(cfg):
    """((train_x, train_y), (test_x, test_y), class names) of the `data` config `cfg`, built
    by its `_target_` (IdxData or CsvData)."""
    return instantiate(cfg).images()


def _fraction(y: torch.Tensor, cfg) -> torch.Tensor:
    """Indices of the stratified `data.train_fraction` share of the labels `y`."""
    if not 0 < cfg.train_fraction <= 1:
        raise UserError(f"data.train_fraction={cfg.train_fraction} must be in (0, 1]")
    if cfg.train_fraction == 1:
        return torch.arange(len(y))
    drop = len(y) - max(1, round(cfg.train_fraction * len(y)))
    return stratified_split(y, drop, cfg.split_seed + 1)[0]


def stratified_split(
    y: torch.Tensor, n_holdout: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of `y` into (kept, held out), the held-out part with `y`'s class shares.

    Each class gives floor(share * n_holdout) images; the few left over go to the classes
    with the largest remainders, so the held-out size is exactly `n_holdout`.
    """
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=generator)
    classes, counts = y.unique(return_counts=True)
    exact = counts.double() * n_holdout / len(y)
    take = exact.floor().long()
    leftover = n_holdout - int(take.sum())
    take[(exact - take).argsort(descending=True, stable=True)[:leftover]] += 1
    shuffled = y[perm]
    held = torch.cat([perm[shuffled == c][:k] for c, k in zip(classes, take, strict=True)])
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().squeeze(1), held.sort().values


def stratified_folds(y: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """Indices of `y` dealt into `k` folds of (nearly) equal size and equal class shares."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    fold = torch.empty(len(y), dtype=torch.long)
    offset = 0
    for c in y.unique():
        members = perm[y[perm] == c]
        # Each class is dealt round-robin, continuing where the last class stopped, so fold
        # sizes differ by at most one.
        fold[members] = (torch.arange(len(members)) + offset) % k
        offset += len(members)
    return [(fold == i).nonzero().squeeze(1) for i in range(k)]


def _data_root(root: str | None) -> Path | None:
    root = root or os.environ.get(DATA_ENV) or None
    return Path(root).expanduser() if root else None


def _load_idx(name: str, root: str | None, cache_dir: str):
    """Return ((train_x, train_y), (test_x, test_y)) through torchvision's dataset class."""
    cls, _, subdirs = IDX_DATASETS[name]
    cache = Path(cache_dir).expanduser()
    local = _data_root(root)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / ".lock", "w")  # noqa: SIM115 (closed by the with below)
    except OSError as err:
        raise UserError(
            f"the data cache {cache} cannot be written ({err.strerror}); set data.cache_dir= "
            f"or FMNIST_LAB_CACHE to a folder of yours"
        ) from None
    # torchvision extracts into <cache>/<Class>/raw; a lock keeps parallel workers from
    # extracting the same files at once.
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        raw = cache / cls.__name__ / "raw"
        if local is not None:
            _stage_local_files(cls, name, local, subdirs, raw)
        _drop_damaged_extractions(cls, raw)
        try:
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                train = cls(str(cache), train=True, download=True)
                test = cls(str(cache), train=False, download=True)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            files = ", ".join(fname for fname, _ in cls.resources)
            reason = " ".join(str(err).split())  # torchvision's message spans several lines
            raise UserError(
                f"could not download {PRETTY[name]} ({reason}); offline, set {DATA_ENV} or "
                f"data.root= to a directory holding {files}"
            ) from None
    return (
        (train.data.unsqueeze(1).contiguous(), train.targets.long()),
        (test.data.unsqueeze(1).contiguous(), test.targets.long()),
    )


def _drop_damaged_extractions(cls, raw: Path) -> None:
    """Delete an extracted IDX file that is truncated or not IDX (a process killed during
    the first extraction), so that torchvision extracts it again from its verified .gz."""
    for fname, _ in cls.resources:
        extracted = raw / fname.removesuffix(".gz")
        if extracted.is_file() and not idx_intact(extracted):
            print(f"note: {extracted} is damaged (truncated or not IDX); extracting it again",
                  file=sys.stderr)  # fmt: skip
            extracted.unlink()


def idx_intact(path: Path) -> bool:
    """Whether `path` is a whole IDX file of unsigned bytes: its header's sizes account for
    exactly the bytes it holds."""
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
            return False
        dims = f.read(4 * head[3])
        if len(dims) < 4 * head[3]:
            return False
    sizes = np.frombuffer(dims, dtype=">u4")
    return path.stat().st_size == 4 + len(dims) + int(np.prod(sizes, dtype=np.int64))


def _stage_local_files(cls, name: str, local: Path, subdirs, raw: Path) -> None:
    """MD5-check the four .gz files under `local` and copy them where torchvision looks."""
    names = [fname for fname, _ in cls.resources]
    candidates = [local, *(local / sub for sub in subdirs)]
    source = next((d for d in candidates if all((d / f).is_file() for f in names)), None)
    if source is None:
        raise UserError(
            f"{PRETTY[name]} files not found in {local}: expected {', '.join(names)} there "
            f"(or in its {subdirs[0]}/ folder); set {DATA_ENV} or data.root= to that directory"
        )
    raw.mkdir(parents=True, exist_ok=True)
    for fname, md5 in cls.resources:
        if not check_integrity(str(source / fname), md5):
            raise UserError(
                f"{source / fname} fails its MD5 check (expected {md5}): "
                f"the file is damaged or not the official {PRETTY[name]} file"
            )
        target = raw / fname
        if not check_integrity(str(target), md5):
            shutil.copyfile(source / fname, target)
            # A stale extracted copy beside it would be trusted by torchvision: drop it.
            target.with_suffix("").unlink(missing_ok=True)


CSV_HEADER = ["label", *(f"pixel{i}" for i in range(1, 785))]  # Kaggle's column names


def read_csv(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the Kaggle form (header, then `label,pixel1..pixel784` per row) as uint8 tensors.

    The file must be UTF-8 text with Kaggle's header and at least one image; blank lines at its
    end are fine. Errors name the file, the line (1 is the header) and the column of the first
    bad cell, or say what the file looks like instead of a CSV.
    """
    if not path.is_file():
        raise UserError(f"CSV file {path} not found; set data.root= or {DATA_ENV} to its folder")
    lines = _text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{path} is empty; expected a header line label,pixel1,...,pixel784")
    header = [h.strip() for h in lines[0].split(",")]
    if header != CSV_HEADER:
        raise UserError(f"{path} line 1: {_header_problem(header)}")
    if len(lines) == 1:
        raise UserError(f"{path} has the header but no images (line 2 onwards: one per image)")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            raise UserError(f"{path} line {number} is blank; only the end may have blank lines")
        if line.count(",") != 784:
            raise UserError(f"{path} line {number}: {line.count(',') + 1} columns, expected 785")
    try:
        table = np.loadtxt(lines[1:], delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError:
        _raise_first_non_integer(path, lines, header)
    bad = np.argwhere((table[:, 1:] < 0) | (table[:, 1:] > 255))
    if len(bad):
        row, col = bad[0]
        raise UserError(
            f"{path} line {row + 2}, column {header[col + 1]}: pixel value "
            f"{table[row, col + 1]} is outside 0..255"
        )
    bad = np.argwhere((table[:, 0] < 0) | (table[:, 0] > 9))
    if len(bad):
        row = bad[0][0]
        raise UserError(
            f"{path} line {row + 2}, column {header[0]}: label {table[row, 0]} is outside 0..9"
        )
    images = torch.from_numpy(table[:, 1:].astype(np.uint8)).reshape(-1, 1, 28, 28)
    return images.contiguous(), torch.from_numpy(table[:, 0].copy())


def _text_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, or an error saying what the file is instead."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        raise UserError(f"{path} is gzip-compressed, not a CSV; decompress it first (gunzip)")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UserError(f"{path} is UTF-16 text; save it as UTF-8")
    if b"\x00" in data[:4096]:
        raise UserError(f"{path} is binary data, not a CSV text file")
    try:
        text = data.decode("utf-8-sig")  # a UTF-8 byte-order mark is fine
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: byte 0x{data[err.start]:02x} is not UTF-8 text; "
                        f"save the file as UTF-8") from None  # fmt: skip
    return text.splitlines()


def _header_problem(header: list[str]) -> str:
    """What is wrong with a CSV's first line, given that it is not Kaggle's header."""
    if all(cell.lstrip("-").isdigit() for cell in header):
        return ("this is an image, not the header; add the header line "
                "label,pixel1,...,pixel784 above it")  # fmt: skip
    if len(header) != 785:
        return f"the header has {len(header)} columns, expected 785 (label,pixel1..pixel784)"
    column = next(
        i for i, (got, want) in enumerate(zip(header, CSV_HEADER, strict=True)) if got != want
    )
    return f"header column {column + 1} is {header[column]!r}, expected {CSV_HEADER[column]!r}"


def _raise_first_non_integer(path: Path, lines: list[str], header: list[str]) -> None:
    # Only reached on the error path, so a slow scan that finds the exact cell is fine.
    for number, line in enumerate(lines[1:], start=2):
        for column, cell in zip(header, line.split(","), strict=True):
            try:
                int(cell)
            except ValueError:
                raise UserError(
                    f"{path} line {number}, column {column}: {cell.strip()!r} is not an integer"
                ) from None
    raise UserError(f"{path} could not be parsed as integers")


class DeviceBatches:
    """Batches sliced from tensors already on the training device; a new order each epoch."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.x, self.y, self.batch_size, self.shuffle = x, y, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        # Training drops a ragged last batch (a batch of one breaks batch norm); the next
        # epoch's permutation puts those images back in play.
        self.drop_last = shuffle and len(x) >= batch_size

    def __len__(self) -> int:
        n, b = len(self.x), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x, self.y
        if self.shuffle:
            perm = torch.randperm(len(x), generator=self.generator).to(x.device)
            x, y = x[perm], y[perm]
        for i in range(len(self)):
            s = slice(i * self.batch_size, (i + 1) * self.batch_size)
            yield x[s], y[s]


class DataModule(pl.LightningDataModule):
    """Hands Lightning the splits as `DeviceBatches` on the trainer's device."""

    def __init__(self, splits: Splits, batch_size: int, eval_batch_size: int, seed: int = 0):
        super().__init__()
        self.splits, self.batch_size, self.eval_batch_size = splits, batch_size, eval_batch_size
        self.seed = seed
        self._train_batches: DeviceBatches | None = None

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        s = self.splits
        for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            setattr(s, name, getattr(s, name).to(device))

    def train_dataloader(self) -> DeviceBatches:
        # One object for the whole fit, so its generator yields a new order every epoch.
        if self._train_batches is None:
            s = self.splits
            self._train_batches = DeviceBatches(
                s.train_x, s.train_y, self.batch_size, shuffle=True, seed=self.seed
            )
        return self._train_batches

    def val_dataloader(self) -> DeviceBatches:
        return DeviceBatches(self.splits.val_x, self.splits.val_y, self.eval_batch_size)

    def test_dataloader(self) -> DeviceBatches:
        return DeviceBatches(self.splits.test_x, self.splits.test_y, self.eval_batch_size)
