"""Does warmup-stable-decay train best_50k's design as well as one-cycle at equal length?

Issue 30's precondition for continuing a promoted trial instead of restarting it: 30 epochs,
crop+flip, 55,000 training images and the 5,000-image validation split, seeds 0, 1, 2, one
run per (schedule, seed); validation accuracy only (no test set is read).

The rule, written before any result: WSD "matches" one-cycle when the difference of the two
means is at most the larger of the two standard deviations over the seeds. If it does not, the
sweep promotes by restarting at the longer length (Hyperband style) instead.

    taskset -c 0 .venv/bin/python docs/wsd_vs_onecycle.py --only onecycle &
    taskset -c 1 .venv/bin/python docs/wsd_vs_onecycle.py --only wsd       # ~40 min each
    .venv/bin/python docs/wsd_vs_onecycle.py                              # the table
    .venv/bin/python docs/wsd_vs_onecycle.py --epochs 2 --fraction 0.05  # a smoke run

Resumable: a (schedule, seed) with a FINISHED run in the store is not trained again
(fmnist_lab/bench/arms.py).
"""

from __future__ import annotations

import argparse

from fmnist_lab.bench.arms import run_arms, table

SCHEDULES = {
    "onecycle": ["scheduler=onecycle"],
    # The top rung of a multi-fidelity sweep: warm up 5 %, hold, decay over the last 20 %.
    "wsd": ["scheduler=wsd", "scheduler.warmup=0.05", "scheduler.decay=0.2"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--store", default="outputs/wsd_vs_onecycle")
    parser.add_argument("--only", choices=list(SCHEDULES), default=None,
                        help="train this schedule's runs only (two processes, one each, "
                        "on two cores); run once more without it for the table")  # fmt: skip
    args = parser.parse_args()
    base = ["experiment=best_50k", "augmentation=crop_flip", f"trainer.max_epochs={args.epochs}",
            f"data.train_fraction={args.fraction}"]  # fmt: skip
    scores = run_arms(SCHEDULES, base, args.seeds, args.store,
                      f"wsd_vs_onecycle_{args.epochs}ep_{args.fraction:g}", args.only)  # fmt: skip
    if args.only is not None:
        return
    print(f"\n{args.epochs} epochs, train_fraction {args.fraction:g}, {args.seeds} seeds "
          f"(validation, 5,000 images):")  # fmt: skip
    verdict = table(scores, "onecycle")["wsd"]
    print(f"  WSD {'matches' if verdict == 'within the spread' else 'does not match'} one-cycle")


if __name__ == "__main__":
    main()
