"""Search spaces from sweep files: Optuna suggestions turned into Hydra overrides.

A space mirrors the config it searches: nested keys lead to a distribution, and the path to
it is the Hydra override key (`model.filters`, `optimizer.lr`, or a config group such as
`augmentation`, whose choices are option names):

    model:
      filters: {type: int_list, length: [1, 4], low: 8, high: 128, log: true}
      dropout: {type: float_list, same_length_as: model.filters, low: 0.0, high: 0.5}
      fc: {type: categorical, choices: ["[]", "[64]"]}   # values as written in an override
    optimizer:
      lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}   # int/float also take `step`
    augmentation: {type: categorical, choices: [none, flip, crop]}

List types are conditional: the length is sampled first (or copied from another list), and
item i exists only when the list is long enough, as `<key>.<i>` in Optuna. Because each entry
has a dotted path, the command line reaches it too: `sweep.space.optimizer.lr.high=0.1`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from fmnist_lab.errors import UserError

TYPES = ("int", "float", "categorical", "int_list", "float_list")


def flatten(space: Mapping[str, Any], prefix: str = "") -> dict[str, Mapping[str, Any]]:
    """The nested space as {"model.filters": {type: ...}, ...}; a mapping with `type` is a leaf."""
    flat: dict[str, Mapping[str, Any]] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        if not isinstance(value, Mapping):
            raise UserError(f"search space '{path}': expected a mapping with a `type`")
        if "type" in value:
            flat[path] = value
        else:
            flat.update(flatten(value, f"{path}."))
    return flat


def validate(space: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise UserError on the first entry of a flattened space that cannot be sampled."""
    for key, spec in space.items():
        kind = spec.get("type")
        if kind not in TYPES:
            raise UserError(f"search space '{key}': type must be one of {', '.join(TYPES)}")
        if kind == "categorical":
            if not spec.get("choices"):
                raise UserError(f"search space '{key}': categorical needs a list of choices")
            continue
        if "low" not in spec or "high" not in spec or spec["low"] > spec["high"]:
            raise UserError(f"search space '{key}': needs low <= high")
        if kind.endswith("_list"):
            other = spec.get("same_length_as")
            if other is None and len(spec.get("length", ())) != 2:
                raise UserError(f"search space '{key}': give length: [min, max] or same_length_as")
            if other is not None and not space.get(other, {}).get("type", "").endswith("_list"):
                raise UserError(
                    f"search space '{key}': same_length_as '{other}' is not a searched list"
                )


def suggest(trial: optuna.Trial, space: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Sample every entry of a flattened `space` in `trial`; return the overrides they make."""
    values: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    # Lists whose length follows another list come after it.
    order = sorted(space, key=lambda k: space[k].get("same_length_as") is not None)
    for key in order:
        spec = space[key]
        kind = spec["type"]
        if kind == "categorical":
            values[key] = trial.suggest_categorical(key, [_text(c) for c in spec["choices"]])
        elif kind in ("int", "float"):
            values[key] = _number(trial, key, kind, spec)
        else:
            other = spec.get("same_length_as")
            if other is not None:
                n = lengths[other]
            else:
                n = trial.suggest_int(f"{key}.n", int(spec["length"][0]), int(spec["length"][1]))
            lengths[key] = n
            item = kind.removesuffix("_list")
            values[key] = [_number(trial, f"{key}.{i}", item, spec) for i in range(n)]
    return [f"{key}={_text(values[key])}" for key in space]


def override_value(value: Any) -> Any:
    """A choice as it is written in a Hydra override."""
    return _text(value)


def grid(space: Mapping[str, Mapping[str, Any]]) -> dict[str, list]:
    """The search space of Optuna's GridSampler: categorical choices, or each entry's `grid`."""
    points = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            points[key] = [_text(c) for c in spec["choices"]]
        elif "grid" in spec and not spec["type"].endswith("_list"):
            points[key] = list(spec["grid"])
        else:
            raise UserError(
                f"the grid sampler needs a `grid: [...]` list for '{key}' (lists cannot be gridded)"
            )
    return points


def _number(trial: optuna.Trial, name: str, kind: str, spec: Mapping[str, Any]):
    log, step = bool(spec.get("log", False)), spec.get("step")
    if kind == "int":
        return trial.suggest_int(name, int(spec["low"]), int(spec["high"]), step=int(step or 1),
                                 log=log)  # fmt: skip
    return trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=step, log=log)


def _text(value: Any) -> Any:
    """A value as it is written in a Hydra override (lists as `[a,b]`); scalars pass through."""
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return "[" + ",".join(str(_text(v)) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return value
