"""The bench's steps once its command line is parsed: the machine and the data, then each
measurement asked for, printed as it finishes."""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import pytorch_lightning as pl
import torch
import torchvision
from hydra import compose, initialize_config_dir

from fmnist_lab.bench import CONF_DIR
from fmnist_lab.bench.sweep import print_sweep
from fmnist_lab.bench.throughput import hardware, print_compile, print_throughput
from fmnist_lab.bench.time_to_acc import print_time_to_acc
from fmnist_lab.data import load_splits
from fmnist_lab.train import keep_freed_memory


def resolve_device(name: str) -> torch.device:
    """`--device`: auto is cuda where there is one, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(args: argparse.Namespace) -> None:
    malloc, unkept = "glibc", []
    if args.malloc == "keep":
        malloc = "keep" if keep_freed_memory() else "glibc (keep unavailable: not glibc)"
    else:  # nor do the trainings and sweeps it starts
        unkept = ["runtime.keep_freed_memory=false"]
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    device = resolve_device(args.device)

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        data_cfg = compose("train", overrides=[f"data={args.data}"]).data
    splits = load_splits(data_cfg)
    n = min(args.images, len(splits.train_y))
    splits.train_x, splits.train_y = splits.train_x[:n], splits.train_y[:n]

    print(f"fmnist_lab bench: {time.strftime('%Y-%m-%d %H:%M')}  {hardware()}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"pytorch-lightning {pl.__version__}; {n} images, batch {args.batch_size}, "
          f"device {device}, channels_last {args.channels_last}, {' and '.join(args.precision)}, "
          f"malloc {malloc}"
          f"{f', best of {args.repeat}' if args.repeat > 1 else ''}")  # fmt: skip
    print_throughput(args, splits, data_cfg, device)
    if args.compile_epochs:
        print_compile(args, splits, device)
    if args.time_to_acc is not None:
        print_time_to_acc(args.time_to_acc, args.train_args, args.max_epochs, unkept)
    if args.sweep:
        print_sweep(args.sweep, args.sweep_workers, args.storage, args.sweep_trials, unkept)
