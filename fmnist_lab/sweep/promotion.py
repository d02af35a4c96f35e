"""Asynchronous successive halving over training epochs, for two objectives: which rungs a
trial passes, and which trial that finished a rung goes on to the next.

A trial trains to the first rung; when it is among the best 1/eta of the trials that finished
that rung, it is promoted and trains on to the next, up to the top rung (`max_epochs`).
Nobody waits for a rung to fill (ASHA, Li et al. 2020): a free worker promotes a trial that
qualifies now, else starts a new one. "Best" has two objectives here, validation accuracy up
and parameters down; `rank` orders a rung's results by one of two rules:

- `nondominated` (MOASHA, Schmucker et al. 2021): by non-dominated front, and within a front
  by an epsilon-net, so that the few promoted spread along the front instead of crowding at
  its accurate end;
- `budgets` (the rule finalists are chosen by): by how many size budgets (each trial's own
  size and every larger one in the rung) a trial is the most accurate within, then by
  accuracy;
- `targets`: the sweep's own finalist budgets (`sweep.finalists.budgets`) take turns, each
  its most accurate trial not yet ranked, smallest budget first; trials over every budget
  last. Every size in a rung is a budget to `budgets`, so the best of the smallest models
  wins most of them; `targets` spends promotions on the budgets a finalist will be chosen in.

This module is arithmetic on results; the study records them (docs/run_state.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """What a trial reached at a rung."""

    trial: int
    val_acc: float
    params: int


def rungs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """The rungs' lengths in epochs, from the top down, each at most 1/eta of the next: 1, 3,
    9, 27 for (1, 27, 3); 1, 3, 10, 30 for (1, 30, 3); the first no shorter than
    `min_epochs`."""
    lengths = [max_epochs]
    while lengths[-1] // eta >= max(min_epochs, 1):
        lengths.append(lengths[-1] // eta)
    return lengths[::-1]


def dominates(a: Result, b: Result) -> bool:
    """`a` is at least as accurate and at most as large as `b`, and better in one."""
    return (a.val_acc >= b.val_acc and a.params <= b.params) and (
        a.val_acc > b.val_acc or a.params < b.params
    )


def fronts(results: Sequence[Result]) -> list[list[Result]]:
    """Non-dominated sorting: the Pareto front, then the front of what is left, ..."""
    left, layers = list(results), []
    while left:
        front = [r for r in left if not any(dominates(o, r) for o in left)]
        layers.append(front)
        left = [r for r in left if r not in front]
    return layers


def _distance(a: Result, b: Result, span: tuple[float, float]) -> float:
    """Distance in objective space, each objective scaled to the rung's range (sizes on a
    log scale: 1,000 to 2,000 parameters is as far as 10,000 to 20,000)."""
    acc = (a.val_acc - b.val_acc) / span[0]
    size = (math.log(a.params) - math.log(b.params)) / span[1]
    return math.hypot(acc, size)


def _epsilon_net(front: list[Result], span: tuple[float, float]) -> list[Result]:
    """`front` in epsilon-net order: the most accurate first, then each time the point
    farthest from those already taken (ties: the more accurate, then the lower number)."""
    order = sorted(front, key=lambda r: (-r.val_acc, r.params, r.trial))
    taken = [order.pop(0)]
    while order:
        far = max(order, key=lambda r: (min(_distance(r, t, span) for t in taken),
                                        r.val_acc, -r.trial))  # fmt: skip
        order.remove(far)
        taken.append(far)
    return taken


def rank_nondominated(results: Sequence[Result], budgets: Sequence[int] = ()) -> list[Result]:
    """MOASHA's order: front by front, each in epsilon-net order."""
    if not results:
        return []
    accs = [r.val_acc for r in results]
    sizes = [math.log(r.params) for r in results]
    span = (max(accs) - min(accs) or 1.0, max(sizes) - min(sizes) or 1.0)
    return [r for front in fronts(results) for r in _epsilon_net(front, span)]


def rank_budgets(results: Sequence[Result], budgets: Sequence[int] = ()) -> list[Result]:
    """The finalists' order: a trial counts once for every budget (each size in the rung)
    within which it is the most accurate; more such budgets first, then accuracy."""
    wins = {r.trial: 0 for r in results}
    for size in sorted({r.params for r in results}):  # not the finalists' `budgets`
        within = [r for r in results if r.params <= size]
        best = max(within, key=lambda r: (r.val_acc, -r.params, -r.trial))
        wins[best.trial] += 1
    return sorted(results, key=lambda r: (-wins[r.trial], -r.val_acc, r.params, r.trial))


def rank_targets(results: Sequence[Result], budgets: Sequence[int] = ()) -> list[Result]:
    """The finalists' `budgets` in turn, smallest first, each taking its most accurate trial
    not yet taken, until none has one left; then the trials over every budget, most accurate
    first."""

    def by_accuracy(rs):
        return sorted(rs, key=lambda r: (-r.val_acc, r.params, r.trial))

    queues = [by_accuracy(r for r in results if r.params <= b) for b in sorted(set(budgets))]
    order: list[Result] = []
    taken: set[int] = set()
    while any(queues):
        for queue in queues:
            while queue and queue[0].trial in taken:
                queue.pop(0)
            if queue:
                order.append(queue.pop(0))
                taken.add(order[-1].trial)
    return order + by_accuracy(r for r in results if r.trial not in taken)


RULES: dict[str, Callable[[Sequence[Result], Sequence[int]], list[Result]]] = {
    "nondominated": rank_nondominated,
    "budgets": rank_budgets,
    "targets": rank_targets,
}


def promotable(results: Sequence[Result], promoted: set[int], eta: int,
               rule: str = "nondominated", budgets: Sequence[int] = ()) -> list[int]:  # fmt: skip
    """Trials of a rung that may go on now, best first: those in the top floor(n / eta) of
    the `n` results so far by `rule` (`budgets`: the finalists', for `targets`), less those
    already `promoted`."""
    top = RULES[rule](results, budgets)[: len(results) // eta]
    return [r.trial for r in top if r.trial not in promoted]
