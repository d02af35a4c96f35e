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

Resumable: a (schedule, seed) with a FINISHED run in the store is not trained again.
"""

from __future__ import annotations

import argparse
import fcntl
import statistics
from pathlib import Path

from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from fmnist_lab.train import train

CONF = str(Path(__file__).resolve().parents[1] / "conf")
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
    store = Path(args.store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    experiment = f"wsd_vs_onecycle_{args.epochs}ep_{args.fraction:g}"
    with open(store / ".create.lock", "w") as lock:  # two processes: one creates the store
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:  # artifacts beside the store
            client.create_experiment(experiment, artifact_location=(store / "mlruns").as_uri())
    scores: dict[str, list[float]] = {name: [] for name in SCHEDULES}
    for seed in range(args.seeds):
        for name, overrides in SCHEDULES.items():
            done = done_run(client, experiment, name, seed)
            if done is None and args.only not in (None, name):
                continue
            if done is None:
                with initialize_config_dir(config_dir=CONF, version_base="1.3"):
                    cfg = compose("train", overrides=[
                        "experiment=best_50k", "augmentation=crop_flip",
                        f"trainer.max_epochs={args.epochs}", f"data.train_fraction={args.fraction}",
                        f"seed={seed}", "test=false", "log_model=false", "evaluate=false",
                        "runtime.progress_bar=false", f"tracking.uri={uri}",
                        f"tracking.experiment={experiment}", *overrides])  # fmt: skip
                result = train(cfg, tags={"schedule": name, "seed": str(seed)},
                               name=f"{name}-s{seed}")  # fmt: skip
                done = result.metrics["val_acc"]
            scores[name].append(done)
            print(f"{name:9s} seed {seed}: val_acc {done:.4f}", flush=True)
    if args.only is not None:
        return
    print(f"\n{args.epochs} epochs, train_fraction {args.fraction:g}, {args.seeds} seeds "
          f"(validation, 5,000 images):")  # fmt: skip
    stats = {}
    for name, values in scores.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        stats[name] = (statistics.mean(values), std)
        each = ", ".join(f"{v:.4f}" for v in values)
        print(f"  {name:9s} {stats[name][0]:.4f} +/- {std:.4f}  ({each})")
    gap = stats["wsd"][0] - stats["onecycle"][0]
    spread = max(stats["wsd"][1], stats["onecycle"][1])
    verdict = "matches" if abs(gap) <= spread else "does not match"
    print(f"  wsd - onecycle = {gap:+.4f}; the seeds' spread {spread:.4f}: WSD {verdict} one-cycle")


def done_run(client: MlflowClient, experiment: str, schedule: str, seed: int) -> float | None:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              f"tags.schedule = '{schedule}' and tags.seed = '{seed}' "
                              "and attributes.status = 'FINISHED'")  # fmt: skip
    return runs[0].data.metrics["val_acc"] if runs else None


if __name__ == "__main__":
    main()
