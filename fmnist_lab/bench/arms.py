"""Side-by-side training comparisons on the validation split: a few arms (named lists of
overrides on one recipe), each trained with seeds 0..n-1 into a store of their own, and a
table with the rule written before the runs: an arm differs from the reference arm when the
difference of the means is larger than the larger of the two standard deviations over the
seeds. No test image is read. Resumable: an (arm, seed) with a FINISHED run is not trained
again; two processes (`only`: an arm each) can share the store, one per core.

Used by docs/wsd_vs_onecycle.py and docs/levers.py.
"""

from __future__ import annotations

import fcntl
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def open_store(folder: str | Path, experiment: str) -> tuple[MlflowClient, str]:
    """The comparison's SQLite store under `folder` (artifacts beside it), its experiment
    made once even when two processes start together."""
    store = Path(folder).resolve()
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    with open(store / ".create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(uri)
        if client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=(store / "mlruns").as_uri())
    return client, uri


def done_run(client: MlflowClient, experiment: str, arm: str, seed: int) -> float | None:
    """The validation accuracy of (arm, seed)'s finished run, if there is one."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id],
                              f"tags.arm = '{arm}' and tags.seed = '{seed}' "
                              "and attributes.status = 'FINISHED'")  # fmt: skip
    return runs[0].data.metrics["val_acc"] if runs else None


def run_arms(arms: Mapping[str, Sequence[str]], base: Sequence[str], seeds: int, folder: str,
             experiment: str, only: str | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Train what is missing (only `only`'s runs, if given) and return every arm's scores
    recorded so far, seed by seed."""
    from fmnist_lab.train import train  # torch and Lightning only when training

    client, uri = open_store(folder, experiment)
    scores: dict[str, list[float]] = {name: [] for name in arms}
    for seed in range(seeds):
        for name, overrides in arms.items():
            done = done_run(client, experiment, name, seed)
            if done is None and only not in (None, name):
                continue
            if done is None:
                with initialize_config_dir(config_dir=CONF, version_base="1.3"):
                    cfg = compose("train", overrides=[
                        *base, f"seed={seed}", "test=false", "log_model=false",
                        "evaluate=false", "runtime.progress_bar=false", f"tracking.uri={uri}",
                        f"tracking.experiment={experiment}", *overrides])  # fmt: skip
                result = train(cfg, tags={"arm": name, "seed": str(seed)},
                               name=f"{name}-s{seed}")  # fmt: skip
                done = result.metrics["val_acc"]
            scores[name].append(done)
            print(f"{name:12s} seed {seed}: val_acc {done:.4f}", flush=True)
    return scores


def table(scores: Mapping[str, list[float]], reference: str) -> dict[str, str]:
    """Print each arm's mean +/- std and its verdict against `reference`: "better" or
    "worse" beyond the seeds' spread, else "within the spread"; returns the verdicts."""
    stats = {}
    for name, values in scores.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        stats[name] = (statistics.mean(values) if values else float("nan"), std)
    verdicts = {}
    for name, values in scores.items():
        each = ", ".join(f"{v:.4f}" for v in values)
        line = f"  {name:12s} {stats[name][0]:.4f} +/- {stats[name][1]:.4f}  ({each})"
        if name != reference:
            gap = stats[name][0] - stats[reference][0]
            spread = max(stats[name][1], stats[reference][1])
            verdicts[name] = ("within the spread" if abs(gap) <= spread
                              else "better" if gap > 0 else "worse")  # fmt: skip
            line += f"  {gap:+.4f} vs {reference} (spread {spread:.4f}): {verdicts[name]}"
        print(line)
    return verdicts
