"""`python -m fmnist_lab.bench.search`: how fast each search strategy finds the accuracy-vs-
parameters frontier, side by side, at equal compute (issue 30; docs/benchmarks.md).

Strategies, on the same study (sweeps/search_bench.yaml: space, data, schedule):
- `random`, `tpe`: every trial trained to the top length (`max_epochs`), random search and
  multi-objective TPE (today's sweep);
- `asha`, `asha_random`: the multi-fidelity scheduler (`sweep.fidelity`, rungs min_epochs *
  eta^k), promoting by non-dominated sorting (MOASHA), new trials drawn by TPE from first-rung
  results, or at random as MOASHA pairs it;
- `asha_budgets`: the scheduler promoting by the finalists' per-budget rule, TPE;
- `asha_targets`: the scheduler promoting toward the sweep's own finalist budgets
  (`rule: targets`), TPE.

Compute is counted in epochs over the trials' training images (every rung and decayed branch
included); each run has the same budget (`--budget` epochs: a fixed-length strategy runs
budget / max_epochs trials). The frontier counts only validation accuracies measured at
`max_epochs` (a fixed-length trial's, a trial's top rung). Its hypervolume is taken in
(validation error, log10 parameters), both minimised, from the reference point (0.5,
log10(max_params)): a model under 50 % or over the size budget adds nothing. Beside it, what
a finalist is chosen by: per finalist budget of the study (`sweep.finalists.budgets`), the best
validation accuracy at `max_epochs` within it.

Each (strategy, repetition) is one sweep command in its own folder under `--out`, with its
sampler seeded by the repetition; run again, the command resumes what is unfinished and
reuses what is done. `--parallel 2` runs two sweeps at once, each pinned to a core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("random", "tpe", "asha", "asha_random", "asha_budgets", "asha_targets")
RULE = {"asha": "nondominated", "asha_random": "nondominated", "asha_budgets": "budgets",
        "asha_targets": "targets"}  # fmt: skip
SIZES = {
    # A 2-core CPU: about an hour for 4 strategies x 3 repetitions, two at a time.
    "cpu": {"max_epochs": 9, "min_epochs": 1, "eta": 3, "budget": 90, "max_params": 100_000,
            "overrides": []},
    # A GPU: all 55,000 training images, 27-epoch trials, min_params_94's sizes.
    "full": {"max_epochs": 27, "min_epochs": 1, "eta": 3, "budget": 810,
             "max_params": 1_000_000,
             "overrides": ["sweep.budget.train_fraction=1.0", "data.val_size=5000",
                           "sweep.space.model.filters.high=128",
                           "sweep.constraints.max_params=1000000"]},
}  # fmt: skip


def strategy_overrides(name: str, size: dict, budget: int, seed: int) -> list[str]:
    """The sweep command's overrides for one strategy's repetition `seed`."""
    top = size["max_epochs"]
    sampler = "random" if name in ("random", "asha_random") else "tpe"
    common = [f"sweep/sampler={sampler}", f"sweep.sampler.seed={seed}",
              f"scheduler.decay_epochs={max(1, math.ceil(0.2 * top - 1e-9))}",
              f"sweep.finalists.epochs={top}", "sweep.finalists.seeds=0",
              "registry.enabled=false", "workers=1", "runtime.progress_bar=false"]  # fmt: skip
    if name.startswith("asha"):
        fid = (f"{{min_epochs:{size['min_epochs']},max_epochs:{top},eta:{size['eta']},"
               f"rule:{RULE[name]}}}")  # fmt: skip
        return [*common, f"sweep.fidelity={fid}", "sweep.budget.n_trials=100000",
                f"sweep.budget.compute_epochs={budget}"]  # fmt: skip
    return [*common, f"sweep.budget.epochs={top}", f"sweep.budget.n_trials={budget // top}"]


@dataclass
class Event:
    """One piece of finished training: when, its epochs, and what it measured at the top."""

    at: float
    epochs: int
    val_acc: float | None  # at max_epochs, else None
    params: int | None


def events(study, top: int) -> list[Event]:
    """Every trial's first training and every later rung, in the order they finished."""
    from optuna.trial import TrialState

    from fmnist_lab.sweep import fidelity
    from fmnist_lab.sweep.record import Record

    out = []
    rungs = {}  # trial -> its done rung records, read once (one study read, not one a trial)
    for name, rec in Record(study).all().items():
        parsed = fidelity.parse(name)
        if parsed and rec["state"] == "done":
            rungs.setdefault(parsed[0], []).append((parsed[1], rec))
    for t in study.get_trials(deepcopy=False):
        if t.datetime_complete is None:
            continue
        a = t.user_attrs
        epochs = int(a.get("epochs_trained", 0))
        at_top = t.state == TrialState.COMPLETE and a.get("rung_epochs", top) == top
        out.append(Event(t.datetime_complete.timestamp(), epochs,
                         a.get("val_acc") if at_top else None, a.get("params")))  # fmt: skip
        for rung, rec in rungs.get(t.number, []):
            val = rec["result"]["val_acc"] if rung == top else None
            out.append(Event(rec["finished"], int(rec["result"]["epochs_trained"]), val,
                             a.get("params")))  # fmt: skip
    return sorted(out, key=lambda e: e.at)


def hypervolume(points: Sequence[tuple[float, int]], max_params: int) -> float:
    """Of (val_acc, params) points, in (error, log10 params), both minimised, from the
    reference point (0.5, log10 max_params): the area the points dominate below it."""
    ref_err, ref_size = 0.5, math.log10(max_params)
    pts = sorted((math.log10(p), 1 - a) for a, p in points if a > 0.5 and p < max_params)
    volume, best_err, prev = 0.0, ref_err, None
    for size, err in pts:  # sizes ascending: the running best error is the staircase
        if prev is not None:
            volume += (size - prev) * (ref_err - best_err)
        best_err, prev = min(best_err, err), size
    if prev is not None:
        volume += (ref_size - prev) * (ref_err - best_err)
    return volume


def curve(evts: Sequence[Event], max_params: int) -> list[tuple[int, float, float]]:
    """(epochs spent, seconds since the first event's start, hypervolume) after each event."""
    spent, points, out = 0, [], []
    start = evts[0].at if evts else 0.0
    for e in evts:
        spent += e.epochs
        if e.val_acc is not None and e.params is not None:
            points.append((e.val_acc, e.params))
        out.append((spent, e.at - start, hypervolume(points, max_params)))
    return out


def best_within(evts: Sequence[Event], budgets: Sequence[int]) -> dict[int, float]:
    """Per budget, the best validation accuracy at the top length of a model within it (0.0:
    none reached the top length within it)."""
    top = [(e.val_acc, e.params) for e in evts if e.val_acc is not None and e.params is not None]
    return {b: max((a for a, p in top if p <= b), default=0.0) for b in budgets}


def study_budgets() -> list[int]:
    """The benchmark study's finalist budgets (sweeps/search_bench.yaml)."""
    from omegaconf import OmegaConf

    from fmnist_lab.bench import CONF_DIR

    spec = OmegaConf.load(Path(CONF_DIR) / "sweep" / "search_bench.yaml")
    return list(spec.sweep.finalists.budgets)


def to_reach(points: Sequence[tuple[int, float, float]], target: float) -> int | None:
    """The epochs spent when the hypervolume first reached `target` (None: never)."""
    return next((spent for spent, _, hv in points if hv >= target - 1e-12), None)


def run_one(out: Path, name: str, rep: int, size: dict, budget: int, core: int | None) -> Path:
    """One sweep command in its own folder (resumed if it was cut); the folder."""
    home = out / f"{name}-r{rep}"
    home.mkdir(parents=True, exist_ok=True)
    if (home / "done").exists():
        return home
    cmd = [sys.executable, "-m", "fmnist_lab.sweep", "sweep=search_bench",
           f"tracking.uri=sqlite:///{home / 'mlflow.db'}",
           *size["overrides"], *strategy_overrides(name, size, budget, rep)]  # fmt: skip
    if core is not None and hasattr(os, "sched_setaffinity"):
        cmd = ["taskset", "-c", str(core), *cmd]
    with open(home / "sweep.log", "a") as log:
        start = time.time()
        done = subprocess.run(cmd, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"{name} repetition {rep} failed (exit {done.returncode}): "
                         f"see {home / 'sweep.log'}")  # fmt: skip
    (home / "done").write_text(json.dumps({"wall_s": time.time() - start}))
    return home


def load(home: Path):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = home / "outputs" / "sweeps" / "search_bench" / "optuna.journal"
    return optuna.load_study(study_name="search_bench",
                             storage=JournalStorage(JournalFileBackend(str(journal))))  # fmt: skip


def mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.0f} +/- {std:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fmnist-lab bench.search",
                                     description=__doc__.splitlines()[0])  # fmt: skip
    parser.add_argument("--size", choices=list(SIZES), default="cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--budget", type=int, default=None,
                        help="epochs of compute per run (default: the size's)")  # fmt: skip
    parser.add_argument("--parallel", type=int, default=1, help="sweeps at once, a core each")
    parser.add_argument("--out", default="outputs/bench_search")
    parser.add_argument("--plot", default=None, help="write the figure here (a .png)")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    budget = args.budget or size["budget"]
    out = Path(args.out).resolve() / args.size
    jobs = [(name, rep) for rep in range(args.reps) for name in args.strategies]
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    # Each job in its own process, `--parallel` at once, round-robin over the cores.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        futures = [pool.submit(run_one, out, name, rep, size, budget,
                               cores[i % len(cores)] if args.parallel > 1 else None)
                   for i, (name, rep) in enumerate(jobs)]  # fmt: skip
        for f in futures:
            f.result()
    report(out, args.strategies, args.reps, args.size, budget, args.plot)


def report(out: Path, strategies: Sequence[str], reps: int, size_name: str, budget: int,
           plot: str | None) -> None:  # fmt: skip
    """The table (and figure) of the runs under `out`; summary.json beside them."""
    size = SIZES[size_name]
    max_params = size["max_params"]
    curves: dict[str, list] = {}
    walls: dict[str, list[float]] = {}
    tops: dict[str, list[int]] = {}
    budgets = study_budgets()
    bests: dict[str, list[dict[int, float]]] = {}
    for name in strategies:
        for rep in range(reps):
            home = out / f"{name}-r{rep}"
            evts = events(load(home), size["max_epochs"])
            curves.setdefault(name, []).append(curve(evts, max_params))
            bests.setdefault(name, []).append(best_within(evts, budgets))
            tops.setdefault(name, []).append(sum(e.val_acc is not None for e in evts))
            walls.setdefault(name, []).append(json.loads((home / "done").read_text())["wall_s"])
    finals = {n: [c[-1][2] if c else 0.0 for c in cs] for n, cs in curves.items()}
    target = statistics.mean(finals["tpe"]) if "tpe" in finals else None
    print(f"\nsearch efficiency, size {size_name}: {budget} epochs of compute per run, {reps} "
          f"repetitions; hypervolume in (val error, log10 params) from (0.5, "
          f"log10 {max_params:,})")  # fmt: skip
    print(f"{'strategy':12s} {'final HV':>16s} {'top-length results':>19s} "
          f"{'epochs to TPE final':>22s} {'wall s':>14s}")  # fmt: skip
    summary = {}
    for name in strategies:
        hv = finals[name]
        reach = [to_reach(c, target) for c in curves[name]] if target is not None else []
        reached = [r for r in reach if r is not None]
        hv_text = f"{statistics.mean(hv):.4f} +/- {statistics.stdev(hv) if len(hv) > 1 else 0:.4f}"
        reach_text = f"{mean_std(reached)} ({len(reached)}/{len(reach)})" if reach else "-"
        print(f"{name:12s} {hv_text:>16s} {mean_std(tops[name]):>19s} {reach_text:>22s} "
              f"{mean_std(walls[name]):>14s}")  # fmt: skip
        summary[name] = {"final_hv": hv, "epochs_to_tpe_final": reach, "wall_s": walls[name],
                         "best_within": {str(b): [r[b] for r in bests[name]]
                                         for b in budgets}}  # fmt: skip
    print(f"\nbest validation accuracy at {size['max_epochs']} epochs within each finalist "
          "budget, mean +/- std over the repetitions (0: none within it)")  # fmt: skip
    print(f"{'strategy':12s} " + " ".join(f"{f'<= {b:,}':>16s}" for b in budgets))
    for name in strategies:
        cells = []
        for b in budgets:
            accs = [100 * r[b] for r in bests[name]]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.2f} +/- {std:.2f}")
        print(f"{name:12s} " + " ".join(f"{c:>16s}" for c in cells))
    (out / "summary.json").write_text(json.dumps({"target_hv": target, "budget": budget,
                                                  "strategies": summary}, indent=1))  # fmt: skip
    if plot:
        draw(curves, target, budget, Path(plot))
        print(f"figure: {plot}")


def draw(curves: dict[str, list], target: float | None, budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"random": "tab:gray", "tpe": "tab:blue", "asha": "tab:red",
               "asha_random": "tab:orange", "asha_budgets": "tab:green",
               "asha_targets": "tab:purple"}  # fmt: skip
    for name, cs in curves.items():
        for i, c in enumerate(cs):
            xs = [0] + [p[0] for p in c]
            ys = [0.0] + [p[2] for p in c]
            ax.step(xs, ys, where="post", color=colours.get(name), alpha=0.8,
                    label=name if i == 0 else None)  # fmt: skip
    if target is not None:
        ax.axhline(target, color="tab:blue", linestyle=":", label="TPE's final (mean)")
    ax.set_xlabel("compute: epochs over the trials' training images")
    ax.set_ylabel("hypervolume of the max-epochs frontier")
    ax.set_xlim(0, budget * 1.05)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
