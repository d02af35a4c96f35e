"""Which data a run saw, as MLflow dataset inputs: the MLflow UI's Datasets column.

Each training run logs one input per split it used (context `training`, `validation`,
`test`), named after the dataset (`fashion_mnist`). Its digest is taken from the MD5s of the
files the images were read from and from how the split was carved out of them (validation
size, split seed, training fraction, cross-validation fold), so two runs share a digest exactly
when they saw the same images; its profile gives the split's size and the files' MD5s.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from fmnist_lab.data import IDX_DATASETS, Splits, _data_root

CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


class SplitDataset(MetaDataset):
    """A split as MLflow sees it: metadata only (the images stay in their files)."""

    def __init__(self, source, name: str, digest: str, profile: dict[str, Any]) -> None:
        self._profile = profile
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def data_files(cfg) -> list[Path]:
    """The files the `data` config `cfg` reads its images from, once they are loaded: the
    extracted IDX files in torchvision's cache, or the two CSV files."""
    if cfg.name in IDX_DATASETS:
        cls = IDX_DATASETS[cfg.name][0]
        raw = Path(cfg.cache_dir).expanduser() / cls.__name__ / "raw"
        return sorted(raw / Path(url).name.removesuffix(".gz") for url, _ in cls.resources)
    root = _data_root(cfg.root)
    return [root / cfg.train_file, root / cfg.test_file] if root else []


@cache
def _md5(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def file_md5s(files: list[Path]) -> dict[str, str]:
    """{file name: MD5} of the files that exist (each hashed once per process)."""
    found = {}
    for path in files:
        if path.is_file():
            stat = path.stat()
            found[path.name] = _md5(path.resolve(), stat.st_size, stat.st_mtime_ns)
    return found


def split_datasets(cfg, splits: Splits, fold: str | None = None) -> list[tuple[SplitDataset, str]]:
    """(dataset, context) for each non-empty split of `splits`, loaded by the `data` config
    `cfg`; `fold` names the cross-validation fold they come from."""
    files = data_files(cfg)
    md5s = file_md5s(files)
    carving = {"val_size": cfg.val_size, "split_seed": cfg.split_seed,
               "train_fraction": cfg.train_fraction, "fold": fold}  # fmt: skip
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": a folder it is
        warnings.simplefilter("ignore")
        source = resolve_dataset_source(str(files[0].parent if files else "unknown"))
    sizes = {"train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y)}
    found = []
    for split, size in sizes.items():
        if not size:
            continue
        what = {"files": md5s, "split": split, **(carving if split != "test" else {})}
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
        profile = {"split": split, "num_rows": size, "files": md5s}
        found.append((SplitDataset(source, cfg.name, digest, profile), CONTEXTS[split]))
    return found


def log_inputs(cfg, splits: Splits, tested: bool, fold: str | None = None) -> None:
    """Log the splits the active run trains, validates and (when `tested`) tests on."""
    for dataset, context in split_datasets(cfg, splits, fold):
        if context != "test" or tested:
            mlflow.log_input(dataset, context=context)
