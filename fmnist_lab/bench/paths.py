"""The three ways to train one epoch of the same model on the same images and device, each
timed after a warm-up: Lightning's, a plain loop's, and a per-sample DataLoader's."""

from __future__ import annotations

import os
import time

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from fmnist_lab.bench import CONF_DIR
from fmnist_lab.data import IDX_DATASETS, DataModule, DeviceBatches, _load_idx
from fmnist_lab.models import build_model
from fmnist_lab.module import Classifier


def make_net(model: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    return build_model(cfg.model), cfg


def bench_lightning(net, splits, batch_size, device, warmup_batches, channels_last,
                    precision="32-true") -> float:  # fmt: skip
    """Seconds for one epoch through pl.Trainer.fit, after a short warm-up fit."""
    fit_seconds(net, splits, batch_size, device, channels_last, limit=warmup_batches,
                precision=precision)  # fmt: skip
    return fit_seconds(net, splits, batch_size, device, channels_last, precision=precision)


def fit_seconds(net, splits, batch_size, device, channels_last, limit=1.0, epochs=1,
                compile=False, precision="32-true") -> float:  # fmt: skip
    """Wall seconds of one pl.Trainer.fit: `epochs` epochs (of `limit` batches)."""
    module = Classifier(net, lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
                        splits.mean, splits.std, channels_last=channels_last,
                        compile=compile)  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator=device.type, devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        num_sanity_val_steps=0, limit_val_batches=0, limit_train_batches=limit,
        precision=precision,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=DataModule(splits, batch_size, 1000))
    sync(device)
    return time.perf_counter() - start


def bench_plain(net, splits, batch_size, device, warmup_batches, channels_last,
                bf16=False) -> float:  # fmt: skip
    """Seconds for one epoch of a hand-written loop over the same device tensors."""
    net = net.to(device).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x_all, y_all = splits.train_x.to(device), splits.train_y.to(device)
    mean, std = splits.mean, splits.std
    batches = DeviceBatches(x_all, y_all, batch_size, shuffle=True)
    return timed_epoch(net, batches, lambda x: (x.float() / 255 - mean) / std, device,
                       warmup_batches, bf16)  # fmt: skip


def bench_dataloader(net, dataset_name, root, cache_dir, indices, batch_size, device,
                     warmup_batches, workers, bf16=False) -> float:  # fmt: skip
    """Seconds for one epoch the way the reference projects train: per-sample transforms."""
    _load_idx(dataset_name, root, cache_dir)  # stages the files where torchvision looks
    cls = IDX_DATASETS[dataset_name][0]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    dataset = Subset(cls(os.path.expanduser(cache_dir), train=True, transform=tf), indices)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        drop_last=True)  # fmt: skip
    net = net.to(device, memory_format=torch.contiguous_format).train()
    return timed_epoch(net, loader, lambda x: x.to(device, non_blocking=True), device,
                       warmup_batches, bf16)  # fmt: skip


def timed_epoch(net, batches, prepare, device, warmup_batches, bf16=False) -> float:
    """Seconds for one pass of SGD over `batches`, after a warm-up of `warmup_batches`;
    `prepare` turns a batch of images into the net's input; `bf16`: forward and loss under
    bf16 autocast, as Lightning's bf16-mixed precision does."""
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def epoch(limit):
        start = time.perf_counter()
        for i, (x, y) in enumerate(batches):
            if limit is not None and i >= limit:
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(net(prepare(x)), y.to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        return time.perf_counter() - start

    epoch(warmup_batches)
    return epoch(None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
