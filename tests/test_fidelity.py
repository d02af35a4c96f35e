"""The scheduler's side of the study (fmnist_lab/sweep/fidelity.py) on hand-made studies in a
real Optuna storage: which rung a free worker trains next, what finalists are chosen from, and
the fidelity specs that are refused before any trial starts."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial
from pydantic import BaseModel

from fmnist_lab import settings
from fmnist_lab.errors import UserError
from fmnist_lab.sweep import fidelity
from fmnist_lab.sweep.record import Record

from .conftest import run_cli


class SweepBlock(BaseModel):
    """A config of a `sweep:` block alone, checked by the sweep file's own schema."""

    sweep: settings.SweepFile


FID = fidelity.Fidelity(min_epochs=1, max_epochs=9, eta=3, decay=0.2, warmup_epochs=0.5,
                        rule="nondominated")  # fmt: skip


def study_with(tmp_path, first: list[tuple[float, int]]) -> optuna.Study:
    """A study on a real journal file whose trials finished the first rung (1 epoch) with
    these (val_acc, params)."""
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal"))
    )
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    for acc, params in first:
        study.add_trial(create_trial(
            values=[acc, params], params={"x": 0.5},
            distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"val_acc": acc, "params": params, "rung_epochs": 1}))  # fmt: skip
    return study


def test_rungs_and_their_schedule():
    assert FID.rungs == [1, 3, 9]
    # 9 epochs: the last 2 decay (ceil(0.2 * 9)), the checkpoint at the end of epoch 7.
    assert FID.overrides(9) == ["scheduler=wsd", "scheduler.warmup_epochs=0.5",
                                "scheduler.decay_epochs=2", "trainer.max_epochs=9"]  # fmt: skip
    assert FID.stable_end(3) == 2 and FID.stable_end(1) == 0


def test_a_free_worker_promotes_the_best_third_then_the_next_rung(tmp_path):
    # Same size: accuracy decides. 6 results at 1 epoch: the best 2 may go on to 3 epochs.
    study = study_with(tmp_path, [(0.5 + 0.01 * i, 1000) for i in range(6)])
    assert fidelity.next_promotion(study, FID) == (5, 3)
    Record(study).start(fidelity.key(5, 3))  # taken (the caller does this under the lock)
    assert fidelity.next_promotion(study, FID) == (4, 3)
    Record(study).start(fidelity.key(4, 3))
    assert fidelity.next_promotion(study, FID) is None  # a third of 6, and no more
    # A seventh trial does not change floor(7 / 3) = 2; trial 5 done at 3 epochs alone gives
    # rung 3 one result: floor(1 / 3) = 0 to 9 epochs.
    Record(study).finish(fidelity.key(5, 3), {"val_acc": 0.8})
    assert fidelity.next_promotion(study, FID) is None
    state = fidelity.read(study, FID)
    assert set(state.results[1]) == set(range(6)) and state.results[3][5].val_acc == 0.8


def test_a_rung_whose_process_died_is_taken_up_before_any_promotion(tmp_path):
    study = study_with(tmp_path, [(0.5 + 0.01 * i, 1000) for i in range(9)])
    Record(study).start(fidelity.key(8, 3))
    Record(study).stop(fidelity.key(8, 3), "its process died")
    assert fidelity.next_promotion(study, FID) == (8, 3)


def test_higher_rungs_are_served_first(tmp_path):
    study = study_with(tmp_path, [(0.5 + 0.01 * i, 1000) for i in range(9)])
    for n, acc in [(8, 0.90), (7, 0.85), (6, 0.80)]:
        Record(study).start(fidelity.key(n, 3))
        Record(study).finish(fidelity.key(n, 3), {"val_acc": acc})
    # Rung 3 has 3 results: its best (trial 8) is due for 9 epochs, before anything else.
    assert fidelity.next_promotion(study, FID) == (8, 9)


def test_finalists_are_chosen_from_the_top_rung_by_its_accuracy(tmp_path):
    study = study_with(tmp_path, [(0.70, 1000), (0.60, 2000), (0.65, 3000)])
    key = fidelity.key(1, 9)  # trial 1 reached the top rung; the others stopped lower
    Record(study).start(key)
    Record(study).finish(key, {"val_acc": 0.91})
    top = fidelity.top_trials(study, FID)
    assert [t.number for t in top] == [1]
    assert top[0].user_attrs["val_acc"] == 0.91 and top[0].user_attrs["first_rung_val_acc"] == 0.60
    assert study.trials[1].user_attrs["val_acc"] == 0.60  # the study itself is unchanged


def spec(**fid):
    sweep = {"name": "s", "objectives": [{"metric": "val_acc", "direction": "maximize"},
                                         {"metric": "params", "direction": "minimize"}],
             "constraints": {}, "sampler": {}, "pruner": {"_target_": "optuna.pruners.NopPruner"},
             "budget": {"n_trials": 4, "epochs": 1, "train_fraction": 1.0}, "space": {},
             "finalists": {"select": "top_k", "top_k": 1, "seeds": 1, "epochs": 9,
                           "target_acc": 0.9},
             "stop": {}, "log_models": False,
             "fidelity": {"min_epochs": 1, "max_epochs": 9, "eta": 3, **fid}}  # fmt: skip
    return sweep


@pytest.mark.parametrize(("change", "says"), [
    ({"eta": 1}, "sweep.fidelity.eta=1 must be at least 2"),
    ({"min_epochs": 10}, "sweep.fidelity.min_epochs=10 must be at most max_epochs=9"),
    ({"max_epochs": 30}, "sweep.fidelity.max_epochs=30 must be at most finalists.epochs=9"),
    ({"decay": 1.0}, "sweep.fidelity.decay"),
    ({"rule": "best"}, "sweep.fidelity.rule"),
    ({"rule": "targets"}, "sweep.fidelity.rule=targets promotes toward finalists.budgets"),
])  # fmt: skip
def test_a_fidelity_that_cannot_work_is_refused_in_one_sentence(change, says):
    with pytest.raises(UserError) as err:
        settings.check(OmegaConf.create({"sweep": spec(**change)}), SweepBlock)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_fidelity_with_a_rerank_or_a_pruner_is_refused():
    block = spec()
    block["finalists"] |= {"select": "budgets", "budgets": [1000], "rerank": 2}
    with pytest.raises(UserError, match="rerank=2 must be 0 with sweep.fidelity"):
        settings.check(OmegaConf.create({"sweep": block}), SweepBlock)
    block = spec()
    block["pruner"] = {"_target_": "optuna.pruners.MedianPruner"}
    with pytest.raises(UserError, match="takes no pruner"):
        settings.check(OmegaConf.create({"sweep": block}), SweepBlock)


def test_the_cli_refuses_a_bad_fidelity_before_recording_anything(tmp_path, small_data):
    result = run_cli(
        "fmnist_lab.sweep", "sweep=quick", *small_data.cfg_overrides(),
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "sweep.fidelity={min_epochs:1,max_epochs:4,eta:1}", "sweep.finalists.epochs=4",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: sweep.fidelity.eta=1 must be at least 2: each rung keeps 1/eta of the trials "
        "below it")  # fmt: skip
    assert not (tmp_path / "mlflow.db").exists()  # nothing recorded
    assert not (tmp_path / "outputs" / "sweeps" / "quick" / "optuna.journal").exists()


def scheduler_sweep(tmp_path, small_data, *overrides: str) -> tuple[object, optuna.Study]:
    """A real scheduler sweep (sweep=quick) on the small generated data: 100 trials allowed,
    8 epochs of compute, rungs of 1, 2 and 4 epochs; its CLI result and its study."""
    result = run_cli(
        "fmnist_lab.sweep", "sweep=quick", *small_data.cfg_overrides(),
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "data.val_size=500",
        "sweep.budget.train_fraction=0.05", "sweep.budget.n_trials=100",
        "sweep.budget.compute_epochs=8", "sweep.fidelity={min_epochs:1,max_epochs:4,eta:2}",
        "sweep.finalists.epochs=4", "sweep.finalists.seeds=0", "registry.enabled=false",
        *overrides, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rung 2ep val_acc" in result.stdout
    journal = tmp_path / "outputs" / "sweeps" / "quick" / "optuna.journal"
    study = optuna.load_study(study_name="quick", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))  # fmt: skip
    return result, study


def test_a_compute_budget_ends_a_scheduler_sweep(tmp_path, small_data):
    _, study = scheduler_sweep(tmp_path, small_data)
    cfg = OmegaConf.create({"sweep": {"budget": {"epochs": 2, "compute_epochs": 8},
                                      "fidelity": {"min_epochs": 1, "max_epochs": 4,
                                                   "eta": 2}}})  # fmt: skip
    spent = fidelity.epochs_spent(study, cfg.sweep)
    # Work starts only below the cap; the last piece may run past it by its own length.
    assert 8 <= spent < 8 + 4 and len(study.trials) < 100


def test_a_one_budget_sweep_searches_for_accuracy_within_its_budget(tmp_path, small_data):
    # sweeps/min_params_20k_cpu.yaml's shape: one objective (validation accuracy), the budget
    # a hard limit, promotions by `targets`, a compute cap.
    _, study = scheduler_sweep(
        tmp_path, small_data, "sweep.objectives=[{metric:val_acc,direction:maximize}]",
        "sweep.constraints.max_params=8000", "++sweep.fidelity.rule=targets",
        "sweep.finalists.select=budgets", "+sweep.finalists.budgets=[8000]",
    )  # fmt: skip
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(len(t.values) == 1 and t.user_attrs["params"] <= 8000 for t in done)
    # Over-budget draws end before training, pruned: TPE counts them among its worst.
    over = [t for t in study.trials if (t.user_attrs.get("params") or 0) > 8000]
    assert over and all(t.state == optuna.trial.TrialState.PRUNED for t in over)
