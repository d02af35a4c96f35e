"""`python -m fmnist_lab.bench`: training throughput of the Lightning path against its limits.

Three ways to train one epoch of the same model on the same images and device:
  lightning   the project's path (Classifier + DataModule + pl.Trainer)
  plain       a hand-written PyTorch loop over the same device tensors (the practical limit)
  dataloader  torchvision's FashionMNIST + DataLoader with per-sample transforms
              (ToTensor, Normalize), as the reference projects train
Each is warmed up first, then timed over one epoch; the ratios come from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
import warnings

import optuna
import pytorch_lightning as pl
import torch
import torchvision
from hydra import compose, initialize_config_dir
from optuna.storages.journal import JournalFileBackend, JournalStorage
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

from fmnist_lab.data import IDX_DATASETS, DataModule, DeviceBatches, _load_idx, load_splits
from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.models import build_model, count_params
from fmnist_lab.module import Classifier
from fmnist_lab.storage import redact
from fmnist_lab.train import keep_freed_memory, train

PRECISION = {"32-true": "fp32", "bf16-mixed": "bf16"}
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


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
    _sync(device)
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
        _sync(device)
        return time.perf_counter() - start

    epoch(warmup_batches)
    return epoch(None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
        flags = next(line.split(":", 1)[1].split() for line in info if line.startswith("flags"))
        # Whether bf16 arithmetic is native here (else bf16-mixed is emulated, and slow).
        native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
        cpu += f" ({', '.join(native) if native else 'no bf16 instructions'})"
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; {gpu}"


def bench_sweep(name: str, workers: int, storage: str | None = None, n_trials: int | None = None,
                overrides: list[str] | None = None) -> tuple[int, float]:  # fmt: skip
    """Run sweep `name` (search only, no finalists; `overrides`: more Hydra overrides) in a
    scratch folder under a fresh study name, on `storage` (else a journal file there):
    (trials, seconds). A study made in a shared database is deleted again afterwards."""
    study_name = f"bench-{name}-w{workers}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fmnist_lab.sweep", f"sweep={name}", f"workers={workers}",
             f"study_name={study_name}", "sweep.finalists.seeds=0",
             f"tracking.uri=sqlite:///{tmp}/mlflow.db", *([f"storage={storage}"] * bool(storage)),
             *([f"sweep.budget.n_trials={n_trials}"] * bool(n_trials)), *(overrides or [])],
            cwd=tmp, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"the sweep with workers={workers} failed: {last}")
        seconds = time.perf_counter() - start
        journal = f"{tmp}/outputs/sweeps/{study_name}/optuna.journal"
        backend = storage or JournalStorage(JournalFileBackend(journal))
        trials = len(optuna.load_study(study_name=study_name, storage=backend).trials)
        if storage:
            optuna.delete_study(study_name=study_name, storage=storage)
        return trials, seconds


class TimeToAccuracy(pl.Callback):
    """After each training epoch, the test accuracy (its evaluation timed apart from the
    training); stops the fit once it reaches `target`."""

    def __init__(self, splits, target: float) -> None:
        self.x, self.y, self.target = splits.test_x, splits.test_y, target
        self.train_s, self.reached = 0.0, None
        self.curve: list[tuple[int, float, float]] = []  # (epoch, training seconds, test acc)

    def on_train_epoch_start(self, trainer, module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        _sync(module.device)
        self.train_s += time.perf_counter() - self.started
        acc = test_accuracy(module, self.x, self.y)
        self.curve.append((trainer.current_epoch + 1, self.train_s, acc))
        if acc >= self.target:
            self.reached = self.train_s
            trainer.should_stop = True


@torch.no_grad()
def test_accuracy(module, x: torch.Tensor, y: torch.Tensor, batch: int = 5000) -> float:
    was_training = module.training
    module.eval()
    correct = 0
    for i in range(0, len(y), batch):
        logits = module(x[i : i + batch].to(module.device))
        correct += int((logits.argmax(1).cpu() == y[i : i + batch]).sum())
    module.train(was_training)
    return correct / len(y)


def time_to_accuracy(target: float, train_args: list[str], max_epochs: int):
    """Train from scratch on all training images (`train_args`: Hydra overrides of
    conf/train.yaml) until the test accuracy reaches `target`; the callback's record."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            *train_args,
            "data.val_size=0",
            f"trainer.max_epochs={max_epochs}",
            "test=false",
            "log_model=false",
            "evaluate=false",
            "trainer.progress_bar=false",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db",
        ]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        splits = load_splits(cfg.data)
        clock = TimeToAccuracy(splits, target)
        with contextlib.redirect_stdout(io.StringIO()):
            train(cfg, callbacks=[clock], splits=splits)
    return clock


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="*", default=["convnet"], help="conf/model names")
    parser.add_argument("--dataset", default="fashion_mnist", choices=list(IDX_DATASETS))
    parser.add_argument("--images", type=int, default=55000, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (dataloader)")
    parser.add_argument("--skip-dataloader", action="store_true")
    parser.add_argument("--precision", nargs="+", default=["32-true"], choices=list(PRECISION),
                        help="of all three paths; both: a row each (bf16-mixed: forward and "
                        "loss under bf16 autocast, for a GPU or a CPU with bf16)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="time each path N times, interleaved, and keep the best: steadier "
                        "ratios on a noisy machine")  # fmt: skip
    parser.add_argument("--compile-epochs", type=int, default=0, metavar="N",
                        help="also time an N-epoch fit of each model with and without "
                        "torch.compile (a trial's length: is compiling worth it?), in the "
                        "first --precision")  # fmt: skip
    parser.add_argument(
        "--time-to-acc",
        type=float,
        default=None,
        metavar="ACC",
        help="also train --train-args from scratch on all training images "
        "until the test accuracy reaches ACC (e.g. 0.94); print the seconds",
    )
    parser.add_argument(
        "--train-args",
        nargs="*",
        default=[],
        help="Hydra overrides of conf/train.yaml for --time-to-acc",
    )
    parser.add_argument("--max-epochs", type=int, default=30, help="for --time-to-acc")
    parser.add_argument("--sweep", default=None, help="also time this sweep's search")
    parser.add_argument("--sweep-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--sweep-trials",
        type=int,
        default=None,
        help="trials per timed sweep (default: the sweep file's budget)",
    )
    parser.add_argument("--storage", default=None,
                        help="the sweep's Optuna storage URL, e.g. postgresql://... "
                        "(default: a journal file)")  # fmt: skip
    parser.add_argument("--malloc", choices=["keep", "glibc"], default="keep",
                        help="keep: freed CPU memory is kept for reuse, as training does "
                        "(trainer.keep_freed_memory); glibc: its default, which returns large "
                        "blocks to the kernel")  # fmt: skip
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW weights in the lightning and plain paths",
    )
    args = parser.parse_args(argv)
    args.precision = list(dict.fromkeys(args.precision))  # each once
    if args.repeat < 1:
        raise UserError(f"--repeat {args.repeat} must be at least 1")
    if args.time_to_acc is not None and not 0 < args.time_to_acc <= 1:
        raise UserError(f"--time-to-acc {args.time_to_acc} must be a fraction in (0, 1]")
    malloc, unkept = "glibc", []
    if args.malloc == "keep":
        malloc = "keep" if keep_freed_memory() else "glibc (keep unavailable: not glibc)"
    else:  # nor do the trainings and sweeps it starts
        unkept = ["trainer.keep_freed_memory=false"]
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        data_cfg = compose("train", overrides=[f"data={args.dataset}"]).data
    splits = load_splits(data_cfg)
    n = min(args.images, len(splits.train_y))
    splits.train_x, splits.train_y = splits.train_x[:n], splits.train_y[:n]
    warmup = 5

    print(f"fmnist_lab bench: {time.strftime('%Y-%m-%d %H:%M')}  {hardware()}")
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
          f"pytorch-lightning {pl.__version__}; {n} images, batch {args.batch_size}, "
          f"device {device}, channels_last {args.channels_last}, {' and '.join(args.precision)}, "
          f"malloc {malloc}"
          f"{f', best of {args.repeat}' if args.repeat > 1 else ''}")  # fmt: skip
    header = f"{'model':<21}{'params':>10}{'lightning':>12}{'plain':>12}{'dataloader':>12}"
    if args.model:
        print(header + f"{'L/plain':>10}{'L/dataloader':>14}{'L ms/step':>11}   (images/s; "
              "L ms/step: Lightning's cost per step over the plain loop)")  # fmt: skip
    for model in args.model:
        net, _ = make_net(model, 0)
        params = count_params(net)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        common = (net, splits, args.batch_size, device, warmup, args.channels_last)
        paths = {}
        for precision in args.precision:
            bf16 = precision == "bf16-mixed"
            paths[precision, "plain"] = functools.partial(bench_plain, *common, bf16)
            paths[precision, "lightning"] = functools.partial(bench_lightning, *common, precision)
            if not args.skip_dataloader:
                # As many images as the others (which ones does not change the speed).
                paths[precision, "dataloader"] = functools.partial(
                    bench_dataloader, net, args.dataset, data_cfg.root, data_cfg.cache_dir,
                    list(range(n)), args.batch_size, device, warmup, args.workers, bf16,
                )  # fmt: skip
        rates = {}
        for _ in range(args.repeat):  # interleaved, so that a slow spell hits every path
            for key, epoch_seconds in paths.items():
                net.load_state_dict(state)
                rates[key] = max(rates.get(key, 0.0), n / epoch_seconds())
        for precision in args.precision:
            light, plain = rates[precision, "lightning"], rates[precision, "plain"]
            dl = rates.get((precision, "dataloader"))
            dl_rate = f"{dl:,.0f}" if dl else "-"
            dl_ratio = f"{light / dl:.2f}x" if dl else "-"
            overhead_ms = args.batch_size * (1 / light - 1 / plain) * 1000
            label = model if len(args.precision) == 1 else f"{model} {PRECISION[precision]}"
            print(
                f"{label:<21}{params:>10,}{light:>12,.0f}{plain:>12,.0f}{dl_rate:>12}"
                f"{light / plain:>9.2f}x{dl_ratio:>14}{overhead_ms:>11.2f}"
            )
        if len(args.precision) == 2:
            speedup = rates["bf16-mixed", "lightning"] / rates["32-true", "lightning"]
            print(f"{'':<21}lightning bf16 / fp32: {speedup:.2f}x")

    if args.compile_epochs:
        print(f"\ntorch.compile, {args.compile_epochs}-epoch fit of {n} images from a cold "
              "start (compile time included):")  # fmt: skip
        for model in args.model:
            net, _ = make_net(model, 0)
            state = {k: v.clone() for k, v in net.state_dict().items()}
            times = {}
            for compiled in (False, True):
                net.load_state_dict(state)
                times[compiled] = fit_seconds(
                    net, splits, args.batch_size, device, args.channels_last,
                    epochs=args.compile_epochs, compile=compiled, precision=args.precision[0],
                )  # fmt: skip
            print(f"  {model:<16} eager {times[False]:6.1f} s   compiled {times[True]:6.1f} s   "
                  f"compiled/eager {times[True] / times[False]:.2f}x")  # fmt: skip

    if args.time_to_acc is not None:
        clock = time_to_accuracy(args.time_to_acc, [*args.train_args, *unkept], args.max_epochs)
        print(f"\ntime to {args.time_to_acc:.1%} test accuracy, from scratch on all training "
              f"images ({' '.join(args.train_args) or 'the default model'}):")  # fmt: skip
        for epoch, seconds, acc in clock.curve:
            print(f"  epoch {epoch:>3}: {seconds:7.1f} s of training, test accuracy {acc:.4f}")
        if clock.reached is None:
            print(f"  not reached in {args.max_epochs} epochs")
        else:
            print(f"  reached after {clock.reached:.1f} s of training")

    if args.sweep:
        where = redact(args.storage) if args.storage else "a journal file"
        print(f"\nsweep '{args.sweep}' (search only, from a cold start of the command; "
              f"storage: {where}):")  # fmt: skip
        for workers in args.sweep_workers:
            trials, seconds = bench_sweep(args.sweep, workers, args.storage, args.sweep_trials,
                                          unkept)  # fmt: skip
            print(f"  workers={workers}: {trials} trials in {seconds:.0f} s = "
                  f"{trials / seconds * 3600:.0f} trials/hour")  # fmt: skip


if __name__ == "__main__":
    main()
