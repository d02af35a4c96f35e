"""Every setting a user can type is checked once, against the schema in fmnist_lab/settings.py:
property-based tests generate wrong values for each key in-process; one real command per verb
shows the exit code, the one line and a store left as it was."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient
from omegaconf import OmegaConf

from fmnist_lab import settings as schema
from fmnist_lab.errors import UserError

from .conftest import CONF, run_cli

SWEEPS = sorted(p.stem for p in (Path(CONF).parent / "sweeps").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (Path(CONF) / "experiment").glob("*.yaml"))


def composed(config: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(config, overrides=list(overrides)), resolve=True)


TRAIN = composed("train")
SWEEP = composed("sweep", "sweep=quick")
CV = composed("cv")


def test_every_shipped_config_is_valid():
    for name in EXPERIMENTS:
        schema.check(OmegaConf.create(composed("train", f"experiment={name}")))
    for name in SWEEPS:
        schema.check(OmegaConf.create(composed("sweep", f"sweep={name}")), schema.Sweep)
    schema.check(OmegaConf.create(CV), schema.CrossValidation)


def not_number() -> st.SearchStrategy:
    # No '${': OmegaConf reads it as a reference and will not even hold it (nor does Hydra's
    # command line pass it on), so it never reaches the schema.
    text = st.text(max_size=5).filter(lambda s: "${" not in s)
    return st.one_of(text, st.booleans(), st.lists(st.integers(), max_size=2))


def whole_below(low: int) -> st.SearchStrategy:
    """Not a whole number of at least `low`."""
    return st.one_of(
        st.integers(max_value=low - 1),
        st.floats(allow_nan=True).filter(lambda f: not f.is_integer() or f < low),
        not_number(),
    )


def real_outside(low: float, high: float, low_ok: bool, high_ok: bool) -> st.SearchStrategy:
    """Not a finite number in the interval."""

    def outside(x: float) -> bool:
        return (
            not math.isfinite(x)
            or x < low or x > high
            or (x == low and not low_ok) or (x == high and not high_ok)
        )  # fmt: skip

    return st.one_of(st.floats(allow_nan=True, allow_infinity=True).filter(outside), not_number())


TRAINING_KEYS = {
    "optimizer.lr": real_outside(0, math.inf, False, False),
    "optimizer.weight_decay": real_outside(0, math.inf, True, False),
    "data.batch_size": whole_below(1),
    "data.eval_batch_size": whole_below(1),
    "data.val_size": st.one_of(whole_below(0), st.integers(min_value=60_000)),
    "data.split_seed": whole_below(0),
    "data.train_fraction": real_outside(0, 1, False, True),
    "trainer.max_epochs": whole_below(1),
    "trainer.devices": whole_below(1).filter(lambda v: v != "auto"),
    "label_smoothing": real_outside(0, 1, True, False),
    "ema.decay": real_outside(0, 1, False, False),
    "bn_lr_scale": real_outside(0, math.inf, False, False),
    "seed": st.one_of(whole_below(0), st.integers(min_value=2**32)),
    "runtime.threads": whole_below(1).filter(lambda v: v is not None),
    "distill.alpha": real_outside(0, 1, True, True),
    "distill.temperature": real_outside(0, math.inf, False, False),
    "lr_scaling.base_batch_size": whole_below(1),
    "augmentation.erasing_p": real_outside(0, 1, True, True),
    "test": st.one_of(st.integers(), st.text(max_size=5)),
}
SWEEP_KEYS = {
    "workers": whole_below(1),
    "sweep.budget.n_trials": whole_below(1),
    "sweep.budget.epochs": whole_below(1),
    "sweep.budget.train_fraction": real_outside(0, 1, False, True),
    "sweep.budget.timeout_s": real_outside(0, math.inf, False, False),
    "sweep.finalists.seeds": whole_below(0),
    "sweep.finalists.epochs": whole_below(1),
    "sweep.finalists.top_k": whole_below(1),
    "sweep.finalists.target_acc": real_outside(0, 1, True, True),
    "sweep.constraints.max_params": whole_below(1).filter(lambda v: v is not None),
    "heartbeat.interval_s": real_outside(0, math.inf, False, False),
    "data.val_size": st.just(0),  # a sweep selects on validation
}


def with_value(config: dict, key: str, value) -> dict:
    changed = copy.deepcopy(config)
    *path, last = key.split(".")
    node = changed
    for part in path:
        node = node[part]
    node[last] = value
    return changed


WRONG = [("train", key, strategy) for key, strategy in TRAINING_KEYS.items()] + [
    ("sweep", key, strategy) for key, strategy in SWEEP_KEYS.items()
]
CONFIGS = {"train": (TRAIN, schema.Training), "sweep": (SWEEP, schema.Sweep)}


@pytest.mark.parametrize(("config", "key", "wrong"), WRONG, ids=[f"{c}:{k}" for c, k, _ in WRONG])
@settings(max_examples=35, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_wrong_setting_is_one_sentence_naming_it(config, key, wrong, data):
    container, model = CONFIGS[config]
    with pytest.raises(UserError) as err:
        schema.check(OmegaConf.create(with_value(container, key, data.draw(wrong))), model)
    message = str(err.value)
    assert message.startswith(f"{key}=") and "\n" not in message, message


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sweep.budgit", 5, "sweep.budgit is not a setting of sweep (misspelt?)"),
        ("sweep.finalists.seed", 2, "sweep.finalists.seed is not a setting of sweep.finalists"),
        ("heartbeat.interval_s", 500, "heartbeat.interval_s=500 must be below heartbeat.grace_s"),
        ("sweep.finalists.select", "budgets", "finalists.select=budgets needs finalists.budgets"),
        ("registry.select_by", "test_acc_mean", "chose the champion on the test set"),
        ("sweep.objectives", [], "sweep.objectives=[]: must"),
    ],
)
def test_a_sweep_file_mistake_is_one_sentence(key, value, message):
    with pytest.raises(UserError, match=re.escape(message)):
        schema.check(OmegaConf.create(with_value(SWEEP, key, value)), schema.Sweep)


def test_a_missing_sweep_block_is_named():
    broken = copy.deepcopy(SWEEP)
    del broken["sweep"]["budget"]
    with pytest.raises(UserError, match="sweep.budget is missing"):
        schema.check(OmegaConf.create(broken), schema.Sweep)


def test_cross_validation_needs_two_folds():
    with pytest.raises(UserError, match="folds=1: must be greater than or equal to 2"):
        schema.check(OmegaConf.create({**CV, "folds": 1}), schema.CrossValidation)


@pytest.mark.slow  # a command start each (Lightning, MLflow)
@pytest.mark.parametrize(
    ("verb", "args"),
    [
        ("fmnist_lab.train", ["optimizer.lr=-1"]),
        ("fmnist_lab.cv", ["data.batch_size=0"]),
        ("fmnist_lab.sweep", ["sweep=quick", "trainer.max_epochs=0"]),
        ("fmnist_lab.reproduce", ["r2_mlp", "--set", "data.val_size=70000"]),
        ("fmnist_lab.tta", ["--recipe", "r2_mlp", "--set", "label_smoothing=1.5"]),
    ],
)
def test_each_verb_refuses_a_wrong_setting_and_records_nothing(tmp_path, small_data, verb, args):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    kept = client.create_run(client.create_experiment("kept")).info.run_id
    before = [e.name for e in client.search_experiments()]
    given_uri = ["--tracking-uri", uri] if verb in ("fmnist_lab.reproduce", "fmnist_lab.tta") else [
        f"tracking.uri={uri}", *small_data.cfg_overrides()]  # fmt: skip
    result = run_cli(verb, *args, *given_uri, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    setting = args[-1].partition("=")[0]
    assert setting in line and "Traceback" not in result.stderr, line
    assert [e.name for e in client.search_experiments()] == before
    assert client.get_run(kept).info.status == "RUNNING"
    assert len(client.search_runs([e.experiment_id for e in client.search_experiments()])) == 1
    assert not (tmp_path / "outputs" / "sweeps" / "quick" / "optuna.journal").exists()
