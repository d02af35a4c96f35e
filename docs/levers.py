"""Which recipe levers move best_50k's validation accuracy beyond the seeds' spread?

Issue 31, item 2: each lever on its own against best_50k's recipe as the multi-fidelity
sweep trains its top rung (warmup-stable-decay: warm up half an epoch, decay over the last
20 % of the epochs), 30 epochs, seeds 0, 1, 2, one run per (arm, seed), validation only (no
test image is read):

- `ema`: the weights' exponential moving average, validated instead of the weights
  (`ema.decay=0.995`: about 200 steps, two epochs of a quarter of the images);
- `bn_lr`: batch-norm weights and biases at 4x the learning rate (`bn_lr_scale=4`);
- `ls_0.2`: label smoothing 0.2 instead of best_50k's 0.1.

The rule, written before any result (fmnist_lab/bench/arms.py): a lever moves validation
accuracy when the difference of its mean from the baseline's is larger than the larger of
the two standard deviations; only a lever that moves it up goes into the search space.

    taskset -c 0 python docs/levers.py --fraction 0.25 --only baseline ema &
    taskset -c 1 python docs/levers.py --fraction 0.25 --only bn_lr ls_0.2
    python docs/levers.py --fraction 0.25                       # the table
    python docs/levers.py --epochs 2 --fraction 0.05            # a smoke run
"""

from __future__ import annotations

import argparse
import math

from fmnist_lab.bench.arms import run_arms, table

LEVERS = {
    "baseline": [],
    "ema": ["ema.decay=0.995"],
    "bn_lr": ["bn_lr_scale=4"],
    "ls_0.2": ["label_smoothing=0.2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--store", default="outputs/levers")
    parser.add_argument("--only", nargs="+", choices=list(LEVERS), default=None,
                        help="train these arms' runs only (one process per core); run once "
                        "more without it for the table")  # fmt: skip
    args = parser.parse_args()
    decay = max(1, math.ceil(0.2 * args.epochs))  # the sweep's rungs: fidelity.decay 0.2
    base = ["experiment=best_50k", f"trainer.max_epochs={args.epochs}",
            f"data.train_fraction={args.fraction}", "scheduler=wsd",
            "scheduler.warmup_epochs=0.5", f"scheduler.decay_epochs={decay}"]  # fmt: skip
    experiment = f"levers_{args.epochs}ep_{args.fraction:g}"
    scores = {}
    for arm in args.only or [None]:
        scores = run_arms(LEVERS, base, args.seeds, args.store, experiment, arm)
    if args.only is not None:
        return
    print(f"\n{args.epochs} epochs, train_fraction {args.fraction:g}, {args.seeds} seeds "
          f"(validation, 5,000 images), each lever alone against best_50k's recipe:")  # fmt: skip
    table(scores, "baseline")


if __name__ == "__main__":
    main()
