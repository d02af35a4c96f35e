"""The multi-fidelity scheduler's side of the study (docs/run_state.md, "Rungs, paused trials
and checkpoints"): the rungs of `sweep.fidelity`, the rung results recorded so far, the next
promotion, and the checkpoints that promoted trials continue from.

A trial is an Optuna trial while its first rung trains and is told then; every later rung is
a work record `rung:t<n>:<E>ep` of the study. `next_promotion` is called under the study's
trials lock by a worker that is free: the decision and its record are written before the lock
is let go, so each promotion is taken once, by one process of one machine."""

from __future__ import annotations

import copy
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab.continuation import stable_end
from fmnist_lab.sweep.promotion import RULES, Result, promotable, rungs
from fmnist_lab.sweep.record import Record, gone

KEY = re.compile(r"^rung:t(\d+):(\d+)ep$")


@dataclass(frozen=True)
class Fidelity:
    """`sweep.fidelity`: rungs of `min_epochs * eta^k` epochs up to `max_epochs`."""

    min_epochs: int
    max_epochs: int
    eta: int
    decay: float  # share of a rung's epochs that decay (at least one epoch)
    warmup_epochs: float  # the same for every rung, so a continuation matches
    rule: str  # promotion.RULES
    budgets: tuple[int, ...] = ()  # sweep.finalists.budgets, which rule `targets` aims at

    @property
    def rungs(self) -> list[int]:
        return rungs(self.min_epochs, self.max_epochs, self.eta)

    @property
    def top(self) -> int:
        return self.max_epochs

    def stable_end(self, epochs: int) -> int:
        return stable_end(epochs, self.decay)

    def overrides(self, epochs: int) -> list[str]:
        """What a run of `epochs` trains with: WSD, its warmup and decay in epochs."""
        return ["scheduler=wsd", f"scheduler.warmup_epochs={self.warmup_epochs}",
                f"scheduler.decay_epochs={epochs - self.stable_end(epochs)}",
                f"trainer.max_epochs={epochs}"]  # fmt: skip


def of(spec: DictConfig) -> Fidelity | None:
    """The sweep file's fidelity, or None where it trains every trial to one length."""
    f = spec.get("fidelity")
    if not f:
        return None
    from fmnist_lab import settings  # its defaults are the one place they are written

    s = settings.Fidelity.model_validate(OmegaConf.to_container(f, resolve=True))
    budgets = tuple(spec.finalists.get("budgets") or ()) if "finalists" in spec else ()
    return Fidelity(s.min_epochs, s.max_epochs, s.eta, s.decay, s.warmup_epochs, s.rule,
                    budgets)  # fmt: skip


def key(trial: int, epochs: int) -> str:
    return f"rung:t{trial}:{epochs}ep"


def parse(name: str) -> tuple[int, int] | None:
    m = KEY.match(name)
    return (int(m[1]), int(m[2])) if m else None


def checkpoint(cfg: DictConfig, trial: int, epoch: int) -> Path | None:
    """Where trial `trial` keeps its run at the end of epoch `epoch` (None for epoch 0: a
    continuation from there is a run from the start)."""
    if epoch <= 0:
        return None
    return checkpoints_dir(cfg) / f"t{trial}" / f"e{epoch}.pt"


def checkpoints_dir(cfg: DictConfig) -> Path:
    return Path(cfg.output_dir).resolve() / "checkpoints"


@dataclass
class Rungs:
    """What the study holds of the rungs: per rung length, each trial's result there."""

    fidelity: Fidelity
    results: dict[int, dict[int, Result]]  # epochs -> trial -> result
    records: dict[str, dict]  # the rung: work records, by key

    def promoted(self, epochs: int) -> set[int]:
        """Trials that have a record (any state) at rung `epochs`."""
        return {parse(k)[0] for k in self.records if parse(k)[1] == epochs}

    def highest(self, trial: int) -> int | None:
        done = [e for e, by in self.results.items() if trial in by]
        return max(done) if done else None


def read(study: optuna.Study, fidelity: Fidelity,
         trials: Sequence[FrozenTrial] | None = None) -> Rungs:  # fmt: skip
    """Every rung result so far: first rungs from the trials, the rest from their records."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    results: dict[int, dict[int, Result]] = {e: {} for e in fidelity.rungs}
    for t in trials:
        a = t.user_attrs
        if t.state == TrialState.COMPLETE and a.get("rung_epochs") == fidelity.rungs[0]:
            results[fidelity.rungs[0]][t.number] = Result(t.number, a["val_acc"], a["params"])
    records = {k: v for k, v in Record(study).all().items() if parse(k)}
    params = {t.number: t.user_attrs.get("params") for t in trials}
    for name, rec in records.items():
        trial, epochs = parse(name)
        if rec["state"] == "done" and epochs in results:
            results[epochs][trial] = Result(trial, rec["result"]["val_acc"], params[trial])
    return Rungs(fidelity, results, records)


def next_promotion(study: optuna.Study, fidelity: Fidelity) -> tuple[int, int] | None:
    """(trial, epochs) of the rung a free worker trains next, or None: a rung whose process
    died first (trained again from the checkpoint below it), else the best promotable trial
    of the highest rung that has one."""
    decided = _decide(study, fidelity)
    return decided[:2] if decided else None


def take(study: optuna.Study, fidelity: Fidelity) -> tuple[int, int] | None:
    """`next_promotion`, recorded `running` under this process with what decided it (the
    trial's place in its rung's ranking, and how many results the rung had): the caller
    holds the trials lock, so no other process can take the same promotion."""
    decided = _decide(study, fidelity)
    if decided is None:
        return None
    trial, epochs, rank, results = decided
    extra = {} if rank is None else {"decided": {"rank": rank, "results": results}}
    Record(study).start(key(trial, epochs), **extra)
    return trial, epochs


def _decide(study: optuna.Study, fidelity: Fidelity):
    state = read(study, fidelity)
    for name, rec in sorted(state.records.items()):
        if rec["state"] == "stopped":
            return (*parse(name), None, None)
    lengths = fidelity.rungs
    for lower, upper in reversed(list(pairwise(lengths))):
        results = list(state.results[lower].values())
        chosen = promotable(results, state.promoted(upper), fidelity.eta, fidelity.rule,
                            fidelity.budgets)  # fmt: skip
        if chosen:
            order = [r.trial for r in RULES[fidelity.rule](results, fidelity.budgets)]
            return chosen[0], upper, order.index(chosen[0]), len(results)
    return None


def epochs_spent(study: optuna.Study, spec: DictConfig) -> int:
    """Epochs the search has trained or is training, over its trials' training images: every
    trial's first training (a fixed-length trial's whole length, a pruned one's epochs up to
    its pruning), every rung after it, decayed branches included; work still running counts
    its whole length. What `sweep.budget.compute_epochs` caps."""
    fid = of(spec)
    planned = fid.rungs[0] if fid else int(spec.budget.epochs)
    spent = 0
    for t in study.get_trials(deepcopy=False):
        trained = t.user_attrs.get("epochs_trained")
        if trained is not None:
            spent += int(trained)
        elif t.state in (TrialState.RUNNING, TrialState.COMPLETE):
            spent += planned  # in training (or told by a version that did not count)
        elif t.state == TrialState.FAIL and "mlflow_run_id" in t.user_attrs:
            spent += planned  # cut short in training: counted whole
    for name, rec in Record(study).all().items():
        if not parse(name):
            continue
        if rec["state"] == "done":
            spent += int(rec["result"]["epochs_trained"])
        elif rec["state"] == "running" and fid is not None:
            trial, epochs = parse(name)
            spent += epochs - fid.stable_end(fid.rungs[fid.rungs.index(epochs) - 1])
    return spent


def stale(rec: dict, grace_s: float | None) -> bool:
    """Whether a running rung record's heartbeat stopped over `grace_s` ago (None: the
    storage keeps no heartbeats, so no record goes stale; its machine's own resume ends it)."""
    beat = rec.get("beat") or rec.get("since")
    return grace_s is not None and beat is not None and time.time() - beat > grace_s


def running(study: optuna.Study, grace_s: float | None) -> list[str]:
    """Rung records still running under a process that may be alive: on this machine, one
    that has not ended; elsewhere, one whose heartbeat is within `grace_s`."""
    return [name for name, rec in Record(study).all().items()
            if parse(name) and rec["state"] == "running" and not gone(rec.get("owner"))
            and not stale(rec, grace_s)]  # fmt: skip


def top_trials(study: optuna.Study, fidelity: Fidelity) -> list[FrozenTrial]:
    """The trials that reached the top rung, each with `val_acc` its top-rung validation
    accuracy (the first rung's kept as `first_rung_val_acc`): what finalists are chosen
    from."""
    trials = study.get_trials(deepcopy=False)
    state = read(study, fidelity, trials)
    top = state.results[fidelity.top]
    chosen = []
    for t in trials:
        if t.number in top and t.state == TrialState.COMPLETE:
            copied = copy.deepcopy(t)
            copied.user_attrs = {**t.user_attrs, "first_rung_val_acc": t.user_attrs["val_acc"],
                                 "val_acc": top[t.number].val_acc}  # fmt: skip
            chosen.append(copied)
    return chosen


def remove_checkpoints(cfg: DictConfig, trial: int | None = None, keep: Path | None = None) -> None:
    """Delete trial `trial`'s checkpoints but `keep` (every trial's when `trial` is None)."""
    folder = checkpoints_dir(cfg) if trial is None else checkpoints_dir(cfg) / f"t{trial}"
    if not folder.exists():
        return
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for path in folder.iterdir():
        if path != keep:
            path.unlink(missing_ok=True)
