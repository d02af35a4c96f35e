"""Images per second of each training path (the table's rows, with their ratios), and an
N-epoch fit with and without torch.compile."""

from __future__ import annotations

import argparse
import functools
import os
import platform

import torch
from omegaconf import DictConfig

from fmnist_lab.bench import PRECISION
from fmnist_lab.bench.paths import (
    bench_dataloader,
    bench_lightning,
    bench_plain,
    fit_seconds,
    make_net,
)
from fmnist_lab.data import Splits
from fmnist_lab.models import count_params

WARMUP = 5  # batches each path trains before its timed epoch


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


def print_throughput(args: argparse.Namespace, splits: Splits, data_cfg: DictConfig,
                     device: torch.device) -> None:  # fmt: skip
    """A row per --model (and --precision): each path's images/s and their ratios."""
    n = len(splits.train_y)
    header = f"{'model':<21}{'params':>10}{'lightning':>12}{'plain':>12}{'dataloader':>12}"
    if args.model:
        print(header + f"{'L/plain':>10}{'L/dataloader':>14}{'L ms/step':>11}   (images/s; "
              "L ms/step: Lightning's cost per step over the plain loop)")  # fmt: skip
    for model in args.model:
        net, _ = make_net(model, 0)
        params = count_params(net)
        state = {k: v.clone() for k, v in net.state_dict().items()}
        common = (net, splits, args.batch_size, device, WARMUP, args.channels_last)
        paths = {}
        for precision in args.precision:
            bf16 = precision == "bf16-mixed"
            paths[precision, "plain"] = functools.partial(bench_plain, *common, bf16)
            paths[precision, "lightning"] = functools.partial(bench_lightning, *common, precision)
            if not args.skip_dataloader:
                # As many images as the others (which ones does not change the speed).
                paths[precision, "dataloader"] = functools.partial(
                    bench_dataloader, net, args.data, data_cfg.root, data_cfg.cache_dir,
                    list(range(n)), args.batch_size, device, WARMUP, args.workers, bf16,
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


def print_compile(args: argparse.Namespace, splits: Splits, device: torch.device) -> None:
    """Each --model's --compile-epochs fit, eager against torch.compile, from a cold start."""
    print(f"\ntorch.compile, {args.compile_epochs}-epoch fit of {len(splits.train_y)} images "
          "from a cold start (compile time included):")  # fmt: skip
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
