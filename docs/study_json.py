"""Keep a scheduler study as JSON in docs/studies/ (its store lives only as long as the
machine): every trial, its overrides, size and validation accuracy at each rung it reached,
and the search's totals. The format of docs/studies/min_params_10k_cpu.json.

    python docs/study_json.py --journal outputs/sweeps/NAME/optuna.journal --study NAME \
        --command "..." --commit abc1234 --hardware "..." --pick 36 \
        --recipe "conf/experiment/search_20k_cpu.yaml (export --chosen)" > docs/studies/NAME.json
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import optuna
from optuna.trial import TrialState

from fmnist_lab.sweep import fidelity

TRAIN_IMAGES = 55_000  # the training split; the search trains on a fraction of it


def clock(moment) -> str | None:
    return moment.strftime("%H:%M:%S") if moment else None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("journal", "study", "command", "commit", "hardware", "recipe"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--pick", type=int, required=True, help="the trial the sweep chose")
    p.add_argument("--train-fraction", type=float, default=0.25)
    p.add_argument("--rungs", default="1,30,3", help="min_epochs,max_epochs,eta")
    args = p.parse_args(argv)

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(args.journal)
    )
    study = optuna.load_study(study_name=args.study, storage=storage)
    low, high, eta = (int(x) for x in args.rungs.split(","))
    fid = fidelity.Fidelity(
        min_epochs=low, max_epochs=high, eta=eta, decay=0.2, warmup_epochs=0.5, rule="budgets"
    )  # only its rungs are read
    rungs = fidelity.read(study, fid)
    trials = study.get_trials(deepcopy=False)
    reached = {t.number: {str(e): round(rungs.results[e][t.number].val_acc, 4)
                          for e in fid.rungs if t.number in rungs.results[e]}
               for t in trials}  # fmt: skip
    finished = [r["finished"] for r in rungs.records.values() if r.get("finished")]
    starts = [t.datetime_start for t in trials if t.datetime_start]
    pick = trials[args.pick]
    out = {
        "study": args.study,
        "command": args.command,
        "commit": args.commit,
        "date": min(starts).strftime("%Y-%m-%d"),
        "hardware": args.hardware,
        "search": {
            "first_trial_start": clock(min(starts)),
            "last_trial_complete": clock(max(t.datetime_complete for t in trials
                                             if t.datetime_complete)),  # fmt: skip
            "last_rung_finished": clock(datetime.fromtimestamp(max(finished), UTC))
            if finished else None,
            "images_per_epoch": round(TRAIN_IMAGES * args.train_fraction),
            "trained_per_rung": {str(e): len(rungs.results[e]) for e in fid.rungs},
            "states": {s.name: sum(t.state == s for t in trials) for s in TrialState
                       if any(t.state == s for t in trials)},  # fmt: skip
        },
        "pick": {
            "trial": pick.number,
            "params": pick.user_attrs.get("params"),
            "top_rung_val_acc": reached[pick.number].get(str(fid.top)),
            "recipe": args.recipe,
        },
        "trials": [
            {"number": t.number, "state": t.state.name, "params": t.user_attrs.get("params"),
             "overrides": t.user_attrs.get("overrides"), "rung_val_acc": reached[t.number],
             "reason": t.user_attrs.get("reason"), "start": clock(t.datetime_start),
             "complete": clock(t.datetime_complete)}
            for t in trials
        ],
    }  # fmt: skip
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
