"""Search spaces: nested sweep-file entries become conditional Optuna suggestions and overrides."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf

from fmnist_lab import space
from fmnist_lab.errors import UserError

from .conftest import REPO

SPACE = {
    "model": {
        "filters": {"type": "int_list", "length": [1, 3], "low": 8, "high": 64, "log": True},
        "dropout": {
            "type": "float_list",
            "same_length_as": "model.filters",
            "low": 0.0,
            "high": 0.5,
        },  # fmt: skip
        "fc": {"type": "categorical", "choices": [[], [32]]},
        "residual": {"type": "categorical", "choices": [False, True]},
    },
    "optimizer": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    "augmentation": {"type": "categorical", "choices": ["none", "crop"]},
}


def test_nested_space_flattens_to_override_keys():
    flat = space.flatten(SPACE)
    assert list(flat) == [
        "model.filters", "model.dropout", "model.fc", "model.residual", "optimizer.lr",
        "augmentation",
    ]  # fmt: skip


def test_suggestions_are_conditional_and_become_overrides():
    flat = space.flatten(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    lengths = set()
    for _ in range(30):
        trial = study.ask()
        overrides = dict(o.split("=", 1) for o in space.suggest(trial, flat))
        filters = overrides["model.filters"].strip("[]").split(",")
        dropouts = overrides["model.dropout"].strip("[]").split(",")
        assert len(filters) == len(dropouts) == trial.params["model.filters.n"]
        lengths.add(len(filters))
        # Item i exists only when the list is that long.
        assert {k for k in trial.params if k.startswith("model.filters.")} == {
            "model.filters.n",
            *(f"model.filters.{i}" for i in range(len(filters))),
        }
        assert all(8 <= int(f) <= 64 for f in filters)
        assert overrides["model.fc"] in ("[]", "[32]")
        assert overrides["model.residual"] in ("true", "false")
        assert overrides["augmentation"] in ("none", "crop")
        assert 1e-4 <= float(overrides["optimizer.lr"]) <= 1e-2
        study.tell(trial, 0.0)
    assert lengths == {1, 2, 3}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "normal"}, "type must be one of"),
        ({"type": "categorical"}, "needs a list of choices"),
        ({"type": "int", "low": 5, "high": 1}, "needs low <= high"),
        ({"type": "int_list", "low": 1, "high": 2}, "give length"),
        ({"type": "float_list", "low": 0, "high": 1, "same_length_as": "x"}, "not a searched list"),
    ],
)
def test_bad_entries_are_refused_with_the_key(entry, message):
    with pytest.raises(UserError, match=f"'model.bad': .*{message}"):
        space.validate(space.flatten({"model": {"bad": entry}}))


def test_grid_needs_finite_values():
    grid = space.grid(
        space.flatten(
            {
                "a": {"type": "float", "low": 0, "high": 1, "grid": [0, 1]},
                "b": {"type": "categorical", "choices": [[], [4]]},
            }
        )
    )
    assert grid == {"a": [0, 1], "b": ["[]", "[4]"]}
    with pytest.raises(UserError, match="grid sampler needs"):
        space.grid(space.flatten({"a": {"type": "int", "low": 0, "high": 3}}))


@pytest.mark.parametrize("name", ["min_params_94", "quick", "lr_wd"])
def test_shipped_sweeps_are_valid(name):
    spec = OmegaConf.load(REPO / "sweeps" / f"{name}.yaml").sweep
    space.validate(space.flatten(spec.space))
    assert spec.name == name and spec.budget.n_trials >= 6
