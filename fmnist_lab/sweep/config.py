"""What a trial trains: the sweep file's checks and each trial's composed training config."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from fmnist_lab import settings
from fmnist_lab import space as search_space
from fmnist_lab.data import Splits, load_splits
from fmnist_lab.errors import UserError, hydra_message
from fmnist_lab.sweep.samplers import left_out

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Keys of conf/sweep.yaml that steer the sweep; a trial's training config drops them.
SWEEP_KEYS = ("sweep", "study_name", "storage", "workers", "enqueue_references", "output_dir",
              "registry", "heartbeat")  # fmt: skip
REFERENCES = ("r3_cnn", "conv2dsimple2")  # the warm start of enqueue_references=true


@dataclass
class WorkerContext:
    cfg: DictConfig  # the sweep config as composed for this command
    overrides: list[str]  # the command line's overrides
    parent_run_id: str
    tracking_uri: str
    deadline: float | None
    storage: Any = None  # the study's Optuna storage, as opened by this process
    study_uid: str | None = None  # tag `study_uid` of every run of the study
    splits: dict[str, Splits] = field(default_factory=dict)

    @property
    def spec(self) -> DictConfig:
        return self.cfg.sweep

    def trial_config(self, trial_overrides: Sequence[str], *extra: str) -> DictConfig:
        """The training config of one trial: base choices, budget, command line, sample."""
        budget = self.spec.budget
        overrides = [
            f"trainer.max_epochs={budget.epochs}",
            f"data.train_fraction={budget.train_fraction}",
            *self.overrides,
            *trial_overrides,
            *extra,
        ]
        if GlobalHydra.instance().is_initialized():  # inside the command's own @hydra.main
            return training_config(compose("sweep", overrides=overrides))
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return training_config(compose("sweep", overrides=overrides))

    def splits_for(self, data_cfg: DictConfig) -> Splits:
        key = OmegaConf.to_yaml(data_cfg)
        if key not in self.splits:
            self.splits[key] = load_splits(data_cfg)
        return self.splits[key]


def check_sweep(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Every check of the sweep file and the command line that needs no storage: a mistake
    stops the command before anything is recorded."""
    spec = cfg.sweep
    settings.check(cfg, settings.Sweep)  # every setting, the sweep file's own block too
    search_space.validate(search_space.flatten(spec.space))
    check_trial_configs(cfg, overrides)
    unused = left_out(spec)
    if unused:
        print(f"note: {', '.join(unused)}: not taken by the chosen sampler or pruner; left out")


def check_trial_configs(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Compose a trial's config with every categorical choice and both ends of every number's
    range once, and check each against the settings' schema, so that a misspelt key or option
    or a range outside what a setting allows stops the command before any worker starts."""
    flat = search_space.flatten(cfg.sweep.space)
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sample = search_space.suggest(probe.ask(), flat)
    ctx = WorkerContext(cfg, list(overrides), "", "", None)
    variants = [sample]
    for i, key in enumerate(flat):
        spec = flat[key]
        # Every choice, and both ends of a number's range: a value out of what the setting
        # allows (an lr range reaching below 0) stops here, not in a trial.
        ends = spec["choices"] if spec["type"] == "categorical" else (
            [spec["low"], spec["high"]] if spec["type"] in ("int", "float") else [])  # fmt: skip
        for value in ends:
            variant = list(sample)
            variant[i] = f"{key}={search_space.override_value(value)}"
            variants.append(variant)
    variants += [entry.split(" ") for entry in warm_start_entries(cfg.sweep)]
    for variant in variants:
        try:
            trial_cfg = ctx.trial_config(variant)
        except Exception as err:
            raise UserError(
                f"a trial's config cannot be composed with {variant}: {hydra_message(err)}"
            ) from None
        try:
            settings.check(trial_cfg)  # a sampled value out of range stops here too
        except UserError as err:
            raise UserError(f"a trial with {' '.join(variant)}: {err}") from None


def warm_start_entries(spec: DictConfig) -> list[str]:
    """The sweep file's `warm_start` configurations, each as one space-separated string."""
    entries = []
    for entry in spec.get("warm_start") or []:
        if isinstance(entry, str) or not all(isinstance(o, str) and "=" in o for o in entry):
            raise UserError(f"sweep.warm_start: each entry must be a list of KEY=VALUE "
                            f"overrides, not {entry}")  # fmt: skip
        if any(" " in o for o in entry):
            raise UserError(f"sweep.warm_start: '{entry}' has an override with a space")
        entries.append(" ".join(entry))
    return entries


def enqueue_warm_start(study: optuna.Study, entries: Sequence[str]) -> None:
    """Queue each warm-start configuration once per study: it is trained first, with the
    trial budget like any trial, and can become a finalist by the same validation rule.
    The sampler learns nothing from it (it has no sampled parameters)."""
    queued = {t.user_attrs.get("warm_start") for t in study.get_trials(deepcopy=False)}
    for entry in entries:
        if entry not in queued:
            study.enqueue_trial({}, user_attrs={"warm_start": entry})


def training_config(cfg: DictConfig) -> DictConfig:
    """A sweep config less its sweep keys: what `train` takes."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for key in SWEEP_KEYS:
        container.pop(key, None)
    return OmegaConf.create(container)


def trial_run_config(ctx: WorkerContext, overrides: Sequence[str]) -> DictConfig:
    """The training config of a trial's run: its overrides, validated, never tested."""
    return ctx.trial_config(overrides, "test=false", "runtime.progress_bar=false",
                            f"log_model={ctx.spec.log_models}")  # fmt: skip


def rerank_count(policy: DictConfig) -> int:
    """`finalists.rerank`; a sweep file written before it existed reranks nothing."""
    return policy.get("rerank", 0)
