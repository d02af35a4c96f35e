"""What runs log under which name, and to how many digits.

One name per meaning, so that one column of the MLflow UI sorts every model that has it:

- `params`: the parameter count, a metric (MLflow sorts and charts metrics by value; a param
  is a string and sorts "11602" before "2976");
- `val_acc`, `test_acc`: the accuracy on the validation or test split; where a run stands for
  several trainings (a finalist's seeds, cross-validation's folds) it is their mean, and
  `val_acc_std` / `test_acc_std` their standard deviation.

Accuracies are rounded to what their split resolves: one image of a 10,000-image test set is
0.0001, so 4 decimals; the mean over 3 seeds resolves 1/30,000, so 5. Losses and timings keep 4
significant digits. Runs recorded before these names keep theirs; `current_metrics` reads them
under today's.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

# Metric names runs logged before, and today's name for each.
RENAMED = {"test_acc_mean": "test_acc", "val_acc_mean": "val_acc"}
SIGNIFICANT = 4  # digits kept of metrics that are not accuracies


def decimals(images: int) -> int:
    """Decimals an accuracy over `images` images resolves: 10,000 -> 4, 5,000 -> 4, 1 -> 0."""
    return max(0, math.ceil(math.log10(images))) if images > 0 else 0


def rounded(key: str, value: float, images: int | None = None) -> float:
    """`value` of metric `key` as it is logged: an accuracy (a name holding `acc`) over
    `images` images to `decimals(images)`, anything else to SIGNIFICANT digits."""
    if not math.isfinite(value):
        return value
    if "acc" in key and images:
        return round(value, decimals(images))
    return float(f"{value:.{SIGNIFICANT}g}")


def mean_and_std(values: Sequence[float], images: int | None) -> tuple[float, float]:
    """The mean and sample standard deviation (0 for one value) of accuracies, each over
    `images` images, rounded to what all of them together resolve."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if not images:
        return mean, std
    places = decimals(images * len(values))
    return round(mean, places), round(std, places)


def split_of(key: str) -> str:
    """The split a per-epoch metric is measured on: `val_acc` -> `val`, `train_loss` ->
    `train`, `test_acc_tshirt` -> `test`."""
    return key.split("_", 1)[0]


def current_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """A run's metrics under today's names (see RENAMED); a name it has already wins."""
    current = dict(metrics)
    for old, new in RENAMED.items():
        if old in current:
            current.setdefault(new, current[old])
            del current[old]
    return current
