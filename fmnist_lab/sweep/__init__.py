"""`fmnist-lab sweep sweep=<name>`: an Optuna study over Hydra configs, tracked in MLflow.

The sweep file `sweeps/<name>.yaml` says what to search and how; every trial composes
`conf/train.yaml` with the sweep's base choices, the command line's overrides and its sampled
overrides, and trains through `fmnist_lab.train.train`. The study lives in an Optuna storage
(a journal file in the sweep's output directory unless `storage=` names one), so running the
same command again resumes it. `workers=N` runs N processes against that storage.

One module per concern, in the order a sweep meets them:
`config` (checks, trial configs) -> `study` (storage, study, parent run) -> `worker` (processes
asking for trials; `locks`, `samplers`) -> `trial` (one training) -> `progress` ->
`finalists` -> `champion` (registry); `run` ties them together and `__main__` is the command.
What ran is recorded in the study (`record`; docs/run_state.md) and `reconcile` brings the
MLflow runs in line with it; `faults` is the chaos test's fault injection. With
`sweep.fidelity`, `fidelity` (rungs, promotions, checkpoints; the rule is `promotion`) decides
which trial a free worker trains on next (`trial.run_rung`).
"""
