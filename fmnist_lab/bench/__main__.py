"""`python -m fmnist_lab.bench`: the command line. Light: argparse only until it is parsed,
so `--help` answers at once; torch, Lightning and the data load after."""

from __future__ import annotations

import argparse

from fmnist_lab import bench
from fmnist_lab.bench import PRECISION
from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.options import add_data, add_storage


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-lab bench", description=bench.__doc__.splitlines()[0]
    )
    parser.add_argument("--model", nargs="*", default=["convnet"], help="conf/model names")
    add_data(parser, help="the dataset whose training images are timed",
             default="fashion_mnist")  # fmt: skip
    parser.add_argument("--images", type=int, default=55000, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto",
                        help="cuda, cpu, ... (default: auto, cuda where there is one)")  # fmt: skip
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
    add_storage(parser, help="the sweep's Optuna storage URL, e.g. postgresql://... "
                "(default: a journal file)")  # fmt: skip
    parser.add_argument("--malloc", choices=["keep", "glibc"], default="keep",
                        help="keep: freed CPU memory is kept for reuse, as training does "
                        "(runtime.keep_freed_memory); glibc: its default, which returns large "
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
    return args


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from fmnist_lab.bench.command import run

    run(args)


if __name__ == "__main__":
    main()
