"""What a running sweep shows: a line per finished trial, a bar on a terminal, and the study's
summary on its MLflow parent run."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import mlflow
import optuna
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab.sweep import fidelity
from fmnist_lab.sweep.record import Record


class Progress:
    """A sweep-level bar on a terminal, and one line per finished trial everywhere."""

    def __init__(self, study: optuna.Study, spec: DictConfig) -> None:
        self.study, self.spec, self.start = study, spec, time.time()
        self.seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.fidelity = fidelity.of(spec)
        self.rungs = {k for k, r in Record(study).all().items()
                      if fidelity.parse(k) and r["state"] == "done"}  # fmt: skip
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=spec.budget.n_trials, initial=len(self.seen), unit="trial")

    def update(self) -> None:
        trials = self.study.get_trials(deepcopy=False)
        new = [t for t in trials if t.state.is_finished() and t.number not in self.seen]
        for t in new:
            self.seen.add(t.number)
            self._write(trial_line(t))
            if self.bar:
                self.bar.update(1)
        if self.fidelity is not None:
            for name, rec in Record(self.study).all().items():
                if fidelity.parse(name) and rec["state"] == "done" and name not in self.rungs:
                    self.rungs.add(name)
                    self._write(rung_line(name, rec, trials))
        if new:
            log_study_summary(self.study)
        if self.bar:
            self.bar.set_postfix_str(best_line(trials))

    def _write(self, line: str) -> None:
        if self.bar:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def trial_line(t: FrozenTrial) -> str:
    attrs = t.user_attrs
    params = f"{attrs['params']:,} params" if "params" in attrs else "no model"
    acc = f"val_acc {attrs['val_acc']:.4f}" if attrs.get("val_acc") is not None else ""
    took = f"{(t.duration.total_seconds() if t.duration else 0):.0f}s"
    what = " ".join(_short(o) for o in attrs.get("overrides", []))
    why = f" ({attrs['reason']})" if "reason" in attrs else ""
    return f"trial {t.number:>3} {t.state.name:<8} {acc:<15} {params:<16} {took:>5}  {what}{why}"


def rung_line(name: str, rec: dict, trials: Sequence[FrozenTrial]) -> str:
    """A rung a trial was promoted to and finished: `trial  3 rung 9ep  val_acc 0.9012 ...`."""
    number, epochs = fidelity.parse(name)
    attrs = trials[number].user_attrs
    first = attrs.get("val_acc")
    params = f"{attrs['params']:,} params" if "params" in attrs else ""
    how = "continued" if rec["result"].get("resumed") else "from the start"
    return (f"trial {number:>3} rung {epochs}ep val_acc {rec['result']['val_acc']:.4f} "
            f"{params:<16} (first rung {attrs.get('rung_epochs')}ep: {first:.4f}; "
            f"{rec['result']['epochs_trained']} epochs {how})")  # fmt: skip


def _short(override: str) -> str:
    """`optimizer.lr=0.0034883721` -> `optimizer.lr=0.00349`, for display only."""
    key, _, value = override.partition("=")
    try:
        return f"{key}={float(value):.3g}" if "." in value or "e" in value else override
    except ValueError:
        return override


def best_line(trials: Sequence[FrozenTrial]) -> str:
    done = [t for t in trials if t.state == TrialState.COMPLETE and "val_acc" in t.user_attrs]
    if not done:
        return "best: -"
    best = max(done, key=lambda t: t.user_attrs["val_acc"])
    return f"best val_acc {best.user_attrs['val_acc']:.4f} ({best.user_attrs['params']:,} params)"


def log_study_summary(study: optuna.Study) -> None:
    """Keep the parent run's view of the study current: counts, best values, Pareto set."""
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    mlflow.log_metrics({
        "trials_complete": counts[TrialState.COMPLETE],
        "trials_pruned": counts[TrialState.PRUNED],
        "trials_failed": counts[TrialState.FAIL],
    })  # fmt: skip
    front = pareto_trials(study)
    if front:
        mlflow.log_metric("best_val_acc", max(t.user_attrs["val_acc"] for t in front))
        mlflow.log_dict(
            [{"trial": t.number, "values": t.values, "params": t.user_attrs.get("params"),
              "val_acc": t.user_attrs.get("val_acc"), "overrides": t.user_attrs["overrides"]}
             for t in front], "pareto.json",
        )  # fmt: skip


def pareto_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Pareto-optimal trials of a multi-objective study; the best one of a single-objective."""
    try:
        return list(study.best_trials)
    except ValueError:
        return []
