"""The promotion rule of the multi-fidelity sweep on hand-made rung results whose right answer
is known (fmnist_lab/sweep/promotion.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fmnist_lab.sweep.promotion import (
    Result,
    dominates,
    fronts,
    promotable,
    rank_budgets,
    rank_nondominated,
    rank_targets,
    rungs,
)


@pytest.mark.parametrize(
    ("low", "high", "eta", "expected"),
    [(1, 27, 3, [1, 3, 9, 27]), (1, 30, 3, [1, 3, 10, 30]), (2, 30, 3, [3, 10, 30]),
     (1, 16, 2, [1, 2, 4, 8, 16]), (4, 4, 3, [4]), (1, 2, 3, [2])],
)  # fmt: skip
def test_rungs_climb_by_eta_to_max_epochs(low, high, eta, expected):
    assert rungs(low, high, eta) == expected


def r(trial: int, acc: float, params: int) -> Result:
    return Result(trial, acc, params)


def test_fronts_peel_the_pareto_front_first():
    a, b, c = r(0, 0.90, 1000), r(1, 0.92, 5000), r(2, 0.89, 6000)  # c: dominated by both
    d = r(3, 0.80, 800)
    assert dominates(a, c) and dominates(b, c) and not dominates(a, b)
    assert [sorted(x.trial for x in f) for f in fronts([a, b, c, d])] == [[0, 1, 3], [2]]


def test_nondominated_spreads_along_the_front_before_the_next_front():
    # The front: 4 points; the most accurate goes first, then the far (small) end, not its
    # near twin; every front member before the dominated point.
    front = [r(0, 0.93, 40000), r(1, 0.929, 39000), r(2, 0.85, 2000), r(3, 0.90, 9000)]
    behind = r(4, 0.92, 45000)
    order = [x.trial for x in rank_nondominated([*front, behind])]
    assert order[:2] == [0, 2] and order[-1] == 4 and set(order[:4]) == {0, 1, 2, 3}


def test_budgets_favours_the_best_within_each_size():
    # Trial 2 is the most accurate within 3 of the 4 sizes; trial 0 within the smallest.
    results = [r(0, 0.80, 1000), r(1, 0.79, 2000), r(2, 0.88, 3000), r(3, 0.87, 9000)]
    assert [x.trial for x in rank_budgets(results)][:2] == [2, 0]


def test_targets_takes_the_finalists_budgets_in_turn():
    # A one-budget study (10,000): its most accurate trials within the budget come first,
    # however small the others. `budgets` counts every size as a budget, so the 1,000-parameter
    # trial at 80 % (the best within 1,000, 1,500, 2,000 and 3,000) goes on before 9,500 at 85 %.
    results = [r(0, 0.80, 1000), r(1, 0.79, 2000), r(2, 0.86, 9000), r(3, 0.85, 9500),
               r(4, 0.87, 11000), r(5, 0.84, 8000), r(6, 0.78, 1500), r(7, 0.77, 3000)]  # fmt: skip
    assert [x.trial for x in rank_targets(results, [10000])] == [2, 3, 5, 0, 1, 6, 7, 4]
    assert promotable(results, set(), 3, "targets", [10000]) == [2, 3]
    assert promotable(results, set(), 3, "budgets") == [0, 2]
    # Two budgets take turns, smallest first, each its best not yet taken; over both: last.
    assert [x.trial for x in rank_targets(results, [9000, 2000])] == [0, 2, 1, 5, 6, 7, 4, 3]


@pytest.mark.parametrize("rule", ["nondominated", "budgets", "targets"])
def test_promotion_takes_the_top_third_and_never_twice(rule):
    results = [r(i, 0.5 + 0.01 * i, 1000) for i in range(9)]  # same size: accuracy decides
    assert promotable(results, set(), 3, rule, [5000]) == [8, 7, 6]
    assert promotable(results, {8}, 3, rule, [5000]) == [7, 6]
    assert promotable(results[:2], set(), 3, rule, [5000]) == []  # fewer than eta: nobody yet


results_st = st.lists(
    st.builds(Result, st.integers(0, 10_000), st.floats(0, 1), st.integers(1, 10**7)),
    max_size=30, unique_by=lambda x: x.trial,
)  # fmt: skip


@given(results_st, st.integers(2, 5), st.sampled_from(["nondominated", "budgets", "targets"]),
       st.lists(st.integers(1, 10**7), max_size=4))  # fmt: skip
def test_rankings_are_permutations_and_promote_at_most_n_over_eta(results, eta, rule, budgets):
    ranked = {"nondominated": rank_nondominated, "budgets": rank_budgets,
              "targets": rank_targets}[rule](results, budgets)  # fmt: skip
    assert sorted(x.trial for x in ranked) == sorted(x.trial for x in results)
    chosen = promotable(results, set(), eta, rule, budgets)
    assert len(chosen) == len(results) // eta
    if rule == "nondominated" and chosen:  # the first promoted is never dominated
        first = next(x for x in results if x.trial == chosen[0])
        assert not any(dominates(o, first) for o in results)
    if rule == "targets" and chosen and any(x.params <= min(budgets, default=0) for x in results):
        # the first promoted is the most accurate within the smallest budget
        within = [x for x in results if x.params <= min(budgets)]
        best = max(x.val_acc for x in within)
        assert next(x for x in results if x.trial == chosen[0]).val_acc == best
