"""The search-efficiency benchmark's arithmetic (fmnist_lab/bench/search.py) on hand-made
results whose answer is known, and every strategy's command composing into a valid sweep."""

from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir

from fmnist_lab import settings
from fmnist_lab.bench.search import (
    SIZES,
    STRATEGIES,
    Event,
    best_within,
    curve,
    hypervolume,
    strategy_overrides,
    to_reach,
)
from fmnist_lab.sweep.config import CONF_DIR


def test_hypervolume_is_the_area_the_frontier_dominates():
    # One point at 90 % (error 0.1) with 1,000 parameters (log 3) against (0.5, log 100,000 = 5):
    # a rectangle of (5 - 3) x (0.5 - 0.1).
    assert hypervolume([(0.9, 1000)], 100_000) == pytest.approx(2 * 0.4)
    # A second, more accurate and larger point adds the strip above the first from log 4 on.
    two = hypervolume([(0.9, 1000), (0.95, 10_000)], 100_000)
    assert two == pytest.approx(2 * 0.4 + 1 * 0.05)
    # A dominated point, one under 50 % and one over the size budget add nothing.
    assert hypervolume([(0.9, 1000), (0.95, 10_000), (0.85, 20_000), (0.4, 100),
                        (0.99, 200_000)], 100_000) == pytest.approx(two)  # fmt: skip
    assert hypervolume([], 100_000) == 0.0


def test_the_curve_counts_compute_and_only_top_length_results():
    events = [Event(0.0, 1, None, 5000), Event(1.0, 9, 0.9, 1000), Event(2.0, 3, None, 1000),
              Event(3.0, 9, 0.95, 10_000)]  # fmt: skip
    points = curve(events, 100_000)
    assert [p[0] for p in points] == [1, 10, 13, 22]
    assert points[0][2] == 0.0 and points[1][2] == pytest.approx(0.8)
    assert points[-1][2] == pytest.approx(0.85)
    assert to_reach(points, 0.8) == 10 and to_reach(points, 0.85) == 22
    assert to_reach(points, 0.9) is None


def test_best_within_each_budget_counts_only_top_length_results():
    events = [Event(0.0, 1, None, 500), Event(1.0, 9, 0.9, 1000), Event(2.0, 9, 0.8, 800),
              Event(3.0, 9, 0.95, 10_000)]  # fmt: skip
    assert best_within(events, [700, 5000, 20_000]) == {700: 0.0, 5000: 0.9, 20_000: 0.95}


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("size", list(SIZES))
def test_every_strategy_is_a_valid_sweep(name, size):
    spec = SIZES[size]
    overrides = ["sweep=search_bench", *spec["overrides"],
                 *strategy_overrides(name, spec, spec["budget"], 1)]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sweep", overrides=overrides)
    # The sweep file's schema (the sweep itself composes every choice of the space again
    # before its first trial; test_sweep and test_settings cover that check).
    settings.check(cfg, settings.Sweep)
    top = spec["max_epochs"]
    assert cfg.scheduler._target_.endswith("wsd")
    assert cfg.scheduler.decay_epochs == math.ceil(0.2 * top)  # the top rung's decay
    if name.startswith("asha"):
        assert cfg.sweep.fidelity.max_epochs == top
        assert cfg.sweep.fidelity.rule == {"asha_budgets": "budgets", "asha_targets": "targets"
                                           }.get(name, "nondominated")  # fmt: skip
        assert cfg.sweep.budget.compute_epochs == spec["budget"]
    else:
        assert cfg.sweep.fidelity is None and cfg.sweep.budget.epochs == top
        assert cfg.sweep.budget.n_trials * top == spec["budget"]
    assert ("Random" in cfg.sweep.sampler._target_) == (name in ("random", "asha_random"))
