"""The learning-rate schedules run for any number of steps a run can have, also a handful
(tiny data, a small train_fraction): no division by zero, and the rate stays finite."""

from __future__ import annotations

import math

import pytest
import torch

from fmnist_lab import schedules


@pytest.mark.parametrize(
    "make", [schedules.constant, schedules.cosine, schedules.onecycle, schedules.wsd]
)
def test_every_schedule_runs_any_number_of_steps(make):
    for steps in range(1, 40):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        schedule = make(optimizer, steps)
        for _ in range(steps):
            optimizer.step()
            schedule.step()
            assert math.isfinite(optimizer.param_groups[0]["lr"])


def test_onecycle_keeps_its_warm_up_share_on_a_real_run():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = schedules.onecycle(optimizer, 1000, pct_start=0.25)
    rates = []
    for _ in range(1000):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert max(range(1000), key=rates.__getitem__) == 249  # the peak after a quarter


def test_wsd_warms_up_holds_and_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = schedules.wsd(optimizer, 1000, warmup=0.05, decay=0.2)
    rates = []
    for _ in range(1000):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.1 / 50) and rates[49] == pytest.approx(0.1)
    assert all(r == pytest.approx(0.1) for r in rates[50:801])
    assert rates[900] == pytest.approx(0.05) and rates[999] == pytest.approx(0.1 / 200)
