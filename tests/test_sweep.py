"""Real sweeps: `python -m fmnist_lab.sweep` as a user runs it, a real Optuna journal storage,
a real MLflow store, real worker processes and real signals; on the real data where a trial's
accuracy is asserted, on small generated data (tests/small_data.py) where only the sweep's
mechanics are."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from fmnist_lab.errors import UserError
from fmnist_lab.report.runs import collect, study_runs
from fmnist_lab.sweep.config import WorkerContext, check_trial_configs
from fmnist_lab.sweep.finalists import select_finalists
from fmnist_lab.sweep.reconcile import reconcile
from fmnist_lab.sweep.record import HOST
from fmnist_lab.sweep.samplers import left_out, make_pruner, make_sampler
from fmnist_lab.sweep.study import load_study, open_study_storage
from fmnist_lab.sweep.worker import gpu_count, gpu_for_worker

from .conftest import CONF, run_cli


def stores(tmp_path: Path, data: list[str]) -> tuple[Path, str, list[str]]:
    """Arguments every sweep here shares: the data, small budget, this test's own stores."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the store before any process races for it
    args = [*data, f"tracking.uri={uri}", "data.val_size=1000", "sweep.budget.train_fraction=0.04"]
    return tmp_path, uri, args


@pytest.fixture
def sweep_env(tmp_path, data_root, cache_dir):
    """A sweep on the real data (slow tests)."""
    return stores(tmp_path, [f"data.root={data_root}", f"data.cache_dir={cache_dir}"])


@pytest.fixture
def small_sweep_env(tmp_path, small_data):
    """A sweep on the small generated data."""
    return stores(tmp_path, small_data.cfg_overrides())


def load(tmp_path: Path, name: str) -> optuna.Study:
    journal = tmp_path / "outputs" / "sweeps" / name / "optuna.journal"
    return optuna.load_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(journal)))
    )


def runs_by_role(uri: str, experiment: str) -> dict[str, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    roles: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        roles.setdefault(run.data.tags.get("role"), []).append(run)
    return roles


def test_trial_config_layers_budget_command_line_and_sample():
    cfg = compose_sweep("sweep=quick")
    ctx = WorkerContext(cfg, ["sweep=quick"], "parent", "sqlite://", None)
    trial = ctx.trial_config(["model.filters=[8,16]", "optimizer.lr=0.004"])
    assert trial.trainer.max_epochs == 2 and trial.data.train_fraction == 0.1  # the budget
    assert trial.model.filters == [8, 16] and trial.optimizer.lr == 0.004
    assert "sweep" not in trial and "workers" not in trial  # only what `train` takes
    # Any override of the base config given on the command line still applies.
    user = ["sweep=quick", "data=mnist", "trainer.max_epochs=5"]
    trial = WorkerContext(cfg, user, "parent", "sqlite://", None).trial_config(["model.fc=[]"])
    assert trial.data.name == "mnist" and trial.trainer.max_epochs == 5 and trial.model.fc == []


@pytest.mark.parametrize(
    ("sampler", "pruner", "kinds"),
    [
        ("tpe", "median", (optuna.samplers.TPESampler, optuna.pruners.MedianPruner)),
        ("nsga2", "hyperband", (optuna.samplers.NSGAIISampler, optuna.pruners.HyperbandPruner)),
        ("random", "successive_halving",
         (optuna.samplers.RandomSampler, optuna.pruners.SuccessiveHalvingPruner)),
        ("grid", "none", (optuna.samplers.GridSampler, optuna.pruners.NopPruner)),
    ],
)  # fmt: skip
def test_samplers_and_pruners_come_from_the_sweep_file(sampler, pruner, kinds):
    cfg = compose_sweep("sweep=lr_wd", f"sweep/sampler={sampler}",
                        f"sweep/pruner={pruner}",
                        "+sweep.space.optimizer.lr.grid=[0.001,0.01]",
                        "+sweep.space.optimizer.weight_decay.grid=[0.0]")  # fmt: skip
    assert isinstance(make_sampler(cfg.sweep), kinds[0])
    assert isinstance(make_pruner(cfg.sweep), kinds[1])


def test_a_sampler_setting_another_sampler_does_not_take_is_left_out():
    """quick sets TPE's n_startup_trials; picking random search on the command line keeps
    the sweep file valid and says what is left out."""
    cfg = compose_sweep("sweep=quick", "sweep/sampler=random", "sweep.sampler.seed=7")
    assert left_out(cfg.sweep) == ["sweep.sampler.n_startup_trials"]
    sampler = make_sampler(cfg.sweep, offset=2)
    assert isinstance(sampler, optuna.samplers.RandomSampler)
    assert sampler._rng.rng.random() == optuna.samplers.RandomSampler(seed=9)._rng.rng.random()


def test_a_search_range_reaching_outside_a_setting_stops_before_any_trial():
    overrides = [
        "sweep=quick",
        "sweep.space.optimizer.lr.low=-0.1",
        "sweep.space.optimizer.lr.log=false",
    ]
    with pytest.raises(UserError, match=r"optimizer\.lr=-0\.1: must be greater than 0"):
        check_trial_configs(compose_sweep(*overrides), overrides)
    good = ["sweep=quick"]
    check_trial_configs(compose_sweep(*good), good)


def test_unknown_sampler_stops_composition():
    with pytest.raises(MissingConfigException, match="cmaes-ish"):
        compose_sweep("sweep=quick", "sweep/sampler=cmaes-ish")


@pytest.mark.slow  # the sweep CLI (each start imports Lightning, Optuna and MLflow)
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+sweep.space.augmentation={type:categorical,choices:[none,nope]}",
         "a trial's config cannot be composed with"),
        ("lr_scaling.rule=cubic", "lr_scaling.rule=cubic: must be 'none', 'linear' or 'sqrt'"),
        ("sweep.finalists.select=budgets", "finalists.select=budgets needs finalists.budgets"),
        ("+sweep.warm_start=[['augmentation=nope']]", "a trial's config cannot be composed with"),
        ("+sweep.warm_start=['model.fc=[]']", "sweep.warm_start: each entry must be a list"),
        ("sweep.finalists.rerank=2", "finalists.rerank=2 needs finalists.select=budgets"),
        ("sweep.finalists.rerank=-1", "sweep.finalists.rerank=-1: must be greater than or"),
        ("registry.select_by=test_acc_mean", "test_acc_mean chose the champion on the test set"),
    ],
)  # fmt: skip
def test_bad_sweep_entry_stops_before_any_trial(small_sweep_env, override, message):
    tmp_path, _, args = small_sweep_env
    result = run_cli("fmnist_lab.sweep", "sweep=quick", *args, override, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert message in line
    assert not (tmp_path / "outputs" / "sweeps" / "quick" / "optuna.journal").exists() or not (
        load(tmp_path, "quick").trials
    )


def finished_study(points: list[tuple[int, float]]) -> optuna.Study:
    """A two-objective study of COMPLETE trials with these (params, val_acc)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for params, acc in points:
        study.add_trial(optuna.trial.create_trial(
            values=[acc, params], user_attrs={"params": params, "val_acc": acc},
        ))  # fmt: skip
    return study


def test_budget_finalists_are_the_frontier_chosen_on_validation():
    study = finished_study([(8_000, 0.90), (9_000, 0.89), (30_000, 0.93), (45_000, 0.925),
                            (60_000, 0.935), (90_000, 0.934), (200_000, 0.95)])  # fmt: skip
    # A fixed-length study (with sweep.fidelity, finalists come from the top rung instead:
    # tests/test_fidelity.py).
    cfg = compose_sweep("sweep=min_params_94", "sweep.fidelity=null",
                        "sweep.finalists.budgets=[5000,10000,20000,50000,100000]")  # fmt: skip
    chosen = select_finalists(study, cfg.sweep)
    # 5 k: nothing fits; 10 k and 20 k: the same 8 k trial, once; 50 k: 30 k; 100 k: 60 k.
    assert [t.user_attrs["params"] for t in chosen] == [8_000, 30_000, 60_000]
    # The Pareto rule takes the most accurate Pareto-optimal trials instead: the big ones.
    pareto = compose_sweep("sweep=min_params_94", "sweep.fidelity=null",
                           "sweep.finalists.select=pareto",
                           "sweep.finalists.top_k=2", "sweep.finalists.rerank=0")  # fmt: skip
    assert [t.user_attrs["params"] for t in select_finalists(study, pareto.sweep)] == [
        200_000, 60_000,
    ]  # fmt: skip


def test_rerank_chooses_each_budget_by_the_longer_training():
    study = finished_study([(8_000, 0.90), (9_000, 0.89), (30_000, 0.93), (45_000, 0.925),
                            (48_000, 0.91)])  # fmt: skip
    cfg = compose_sweep("sweep=min_params_94", "sweep.fidelity=null", "sweep.finalists.rerank=2",
                        "sweep.finalists.budgets=[10000,50000]")  # fmt: skip
    # The sweep files rank at full length with the scheduler's top rung instead.
    assert compose_sweep("sweep=min_params_94").sweep.fidelity.max_epochs == 30
    # What the longer training scored (by trial number): it reverses the search's order.
    longer = {0: 0.91, 1: 0.92, 2: 0.93, 3: 0.94, 4: 0.99}
    chosen = select_finalists(study, cfg.sweep, longer)
    # 10 k: of the two best (8 k, 9 k) the 9 k one; 50 k: of the two best (30 k, 45 k) the
    # 45 k one. The 48 k trial scored best at length but was not among the budget's two best.
    assert [t.user_attrs["params"] for t in chosen] == [9_000, 45_000]
    # Without the longer training's scores, the search's own ranking decides.
    assert [t.user_attrs["params"] for t in select_finalists(study, cfg.sweep)] == [
        8_000, 30_000,
    ]  # fmt: skip


def compose_sweep(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("sweep", overrides=list(overrides))


@pytest.mark.slow
def test_multi_objective_sweep_with_two_workers(small_sweep_env):
    tmp_path, uri, args = small_sweep_env
    result = run_cli(
        "fmnist_lab.sweep", "sweep=quick", *args, "workers=2", "sweep.budget.n_trials=9",
        "enqueue_references=true",
        "sweep.budget.epochs=1", "sweep/sampler=random", "sweep.sampler.seed=3",
        "sweep.constraints.max_params=200000", "sweep.space.model.filters.length=[1,5]",
        "sweep.finalists.top_k=1",
        "sweep.finalists.seeds=2", "sweep.finalists.epochs=1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    study = load(tmp_path, "quick")
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(9))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes ran trials

    # The pre-checks end a trial before any training, with the reason recorded.
    # The warm start: R3's CNN and R5's Conv2Dsimple2 came first, and are over the budget.
    assert [t.user_attrs.get("reference") for t in trials[:2]] == ["r3_cnn", "conv2dsimple2"]
    assert [t.user_attrs["overrides"] for t in trials[:2]] == [["model=r3_cnn"],
                                                               ["model=conv2dsimple2"]]  # fmt: skip
    for t in trials[2:]:
        filters = json.loads(t.user_attrs["overrides"][0].split("=", 1)[1])
        if len(filters) >= 5:
            assert t.state == TrialState.PRUNED and "poolings" in t.user_attrs["reason"]
        elif t.user_attrs["params"] > 200000:
            assert t.state == TrialState.PRUNED and "exceed the budget" in t.user_attrs["reason"]
        else:
            assert t.state == TrialState.COMPLETE
            assert t.values == [t.user_attrs["val_acc"], t.user_attrs["params"]]
    # The budget pre-check is certain to meet the two references (0.6 M and 32 M parameters).
    for t in trials[:2]:
        assert t.state == TrialState.PRUNED and "exceed the budget" in t.user_attrs["reason"]

    roles = runs_by_role(uri, "quick")
    (parent,) = roles["study"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.sampler"] == "RandomSampler"
    assert parent.data.metrics["trials_complete"] == len(complete)
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "sweep_quick.yaml", "pareto.json", "finalists.json", "base_config.yaml",
    }  # fmt: skip

    # One child run per trial, linked to the parent, in the trial's final state.
    children = roles["trial"]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == list(range(9))
    by_number = {t.number: t for t in trials}
    for run in children:
        trial = by_number[int(run.data.tags["optuna.trial"])]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_acc")
        if trial.state == TrialState.COMPLETE:
            assert len(history) == 1 and "test_acc" not in run.data.metrics
            assert run.data.params["data.train_fraction"] == "0.04"
        else:
            assert history == []  # never trained
            assert run.data.tags["optuna.reason"] == trial.user_attrs["reason"]

    # The finalist: the most accurate Pareto trial, retrained on all training images, 2 seeds.
    (finalist,) = roles["finalist"]
    seeds = roles["finalist_seed"]
    assert len(seeds) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in seeds} == {finalist.info.run_id}
    assert all(r.data.params["data.val_size"] == "0" for r in seeds)
    accs = [r.data.metrics["test_acc"] for r in seeds]
    # One name per meaning: the finalist's test_acc is its seeds' mean, rounded to what
    # 2 x the test split resolves; run names are short and unique in their first characters.
    assert finalist.data.metrics["test_acc"] == pytest.approx(sum(accs) / 2, abs=1e-4)
    assert "test_acc_mean" not in finalist.data.metrics
    assert finalist.info.run_name == f"t{finalist.data.tags['optuna.trial']}-" + (
        finalist.info.run_name.split("-")[1] + "-final"
    )
    assert sorted(r.info.run_name for r in seeds) == [
        finalist.info.run_name.replace("-final", f"-s{s}") for s in (0, 1)
    ]
    assert finalist.data.metrics["test_acc_std"] >= 0
    best = max(complete, key=lambda t: t.user_attrs["val_acc"])
    assert finalist.data.tags["optuna.trial"] == str(best.number)
    assert "test_acc (mean +/- std)" in result.stdout


@pytest.mark.slow
def test_single_objective_sweep_prunes_weak_trials(sweep_env):
    tmp_path, uri, args = sweep_env
    result = run_cli(
        "fmnist_lab.sweep", "sweep=lr_wd", *args, "model=convnet_20k", "augmentation=none",
        "sweep.budget.n_trials=6", "sweep.budget.epochs=3", "sweep/sampler=random",
        "sweep.pruner.n_startup_trials=2", "sweep.pruner.n_warmup_steps=0",
        "sweep.space.optimizer.lr.low=1e-5", "sweep.space.optimizer.lr.high=0.05",
        "sweep.finalists.seeds=0", "sweep.log_models=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(tmp_path, "lr_wd").get_trials()
    assert len(trials) == 6
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [t.user_attrs for t in trials]
    client = MlflowClient(uri)
    for t in trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        epochs = len(client.get_metric_history(run.info.run_id, "val_acc"))
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["reason"].startswith("pruned after epoch")
            assert epochs < 3 and run.data.tags["optuna.state"] == "PRUNED"
        else:
            assert t.state == TrialState.COMPLETE and epochs == 3


@pytest.mark.slow
def test_warm_start_configurations_run_first_and_once(sweep_env):
    tmp_path, uri, args = sweep_env
    warm = [["model.filters=[8,16]", "model.fc=[]", "augmentation=flip"], ["model.filters=[12]"]]
    listed = ",".join("[" + ",".join(f"'{o}'" for o in entry) + "]" for entry in warm)
    sweep = ["sweep=quick", *args, f"+sweep.warm_start=[{listed}]", "sweep.budget.epochs=1",
             "sweep.finalists.seeds=0", "sweep.log_models=false"]  # fmt: skip
    result = run_cli("fmnist_lab.sweep", *sweep, "sweep.budget.n_trials=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(tmp_path, "quick").get_trials()
    assert [t.user_attrs["overrides"] for t in trials[:2]] == warm
    assert not trials[0].params and trials[2].params  # the third was sampled
    client = MlflowClient(uri)
    run = client.get_run(trials[0].user_attrs["mlflow_run_id"])
    assert run.data.params["model.filters"] == "[8, 16]"
    assert run.data.params["augmentation.flip"] == "True"
    assert trials[0].state == TrialState.COMPLETE and trials[0].user_attrs["val_acc"] > 0.1

    # Resumed with a larger budget: the warm start is not queued again.
    result = run_cli("fmnist_lab.sweep", *sweep, "sweep.budget.n_trials=4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(tmp_path, "quick").get_trials()
    assert len(trials) == 4
    assert sum("warm_start" in t.user_attrs for t in trials) == 2


@pytest.mark.slow
def test_rerank_trains_the_best_trials_again_and_picks_on_validation(small_sweep_env):
    tmp_path, uri, args = small_sweep_env
    warm = [[f"model.filters={f}", "model.head=gap", "model.fc=[]"]
            for f in ("[8]", "[8,16]", "[16,32]")]  # fmt: skip
    listed = ",".join("[" + ",".join(f"'{o}'" for o in entry) + "]" for entry in warm)
    sweep = ["sweep=quick", *args, f"+sweep.warm_start=[{listed}]", "sweep.budget.n_trials=3",
             "sweep.budget.epochs=1", "sweep.finalists.select=budgets",
             "+sweep.finalists.budgets=[1000000]", "sweep.finalists.rerank=2",
             "sweep.finalists.rerank_epochs=1", "sweep.finalists.seeds=1",
             "sweep.finalists.epochs=1"]  # fmt: skip
    result = run_cli("fmnist_lab.sweep", *sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rerank: 2 trials (2 best per budget), 1 epochs" in result.stdout

    study = load(tmp_path, "quick")
    trials = study.get_trials()
    by_search = sorted(trials, key=lambda t: (-t.user_attrs["val_acc"], t.user_attrs["params"]))
    top2 = {t.number for t in by_search[:2]}
    scores = {int(k.rsplit("t", 1)[1]): v["result"]["val_acc"]
              for k, v in study.user_attrs.items() if k.startswith("rerank:1ep:")}  # fmt: skip
    assert set(scores) == top2  # the third was not trained again

    roles = runs_by_role(uri, "quick")
    reranked = {int(r.data.tags["optuna.trial"]): r for r in roles["rerank"]}
    assert set(reranked) == top2
    for number, run in reranked.items():
        # Trained on all training images less the validation split, never tested.
        assert run.data.params["data.train_fraction"] == "1.0"
        assert run.data.params["data.val_size"] == "1000"
        assert run.data.metrics["val_acc"] == pytest.approx(scores[number])
        assert "test_acc" not in run.data.metrics
        assert run.data.tags["work"] == f"rerank:1ep:t{number}"
        assert study.user_attrs[f"rerank:1ep:t{number}"]["run_id"] == run.info.run_id
    winner = max(top2, key=lambda n: (scores[n], -trials[n].user_attrs["params"]))
    (finalist,) = roles["finalist"]
    assert finalist.data.tags["optuna.trial"] == str(winner)
    assert finalist.data.metrics["rerank_val_acc"] == pytest.approx(scores[winner])
    # The report keeps them off the trials' frontier (another training length).
    rows = collect(study_runs(MlflowClient(uri), parent=roles["study"][0]))
    assert "rerank" not in {row.role for row in rows} and len(rows) == 4

    # Run again: the reranked trials and the finalist are kept, nothing trains again.
    result = run_cli("fmnist_lab.sweep", *sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    roles = runs_by_role(uri, "quick")
    assert len(roles["rerank"]) == 2 and len(roles["finalist"]) == 1


def dead_pid() -> int:
    """The id of a process of this machine that has ended: a killed worker."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # a real sweep resumed
def test_resume_records_a_run_for_every_trial_its_worker_left_without_one(small_sweep_env):
    """The windows between a trial's start in Optuna and its run in MLflow, each left as a
    worker leaves it, in the real journal and MLflow store; resuming records every run once.
    The study is set up as one begun before the study kept a `uid`: its runs are adopted."""
    tmp_path, uri, args = small_sweep_env
    overrides = ["sweep=quick", *args, "sweep.budget.n_trials=4", "sweep.finalists.seeds=0"]
    cfg = compose_sweep(*overrides, f"output_dir={tmp_path / 'outputs' / 'sweeps' / 'quick'}")
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("quick")
    parent_id = client.create_run(experiment_id, tags={"role": "study"}).info.run_id
    storage = open_study_storage(cfg)
    study = load_study(cfg, storage)
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    worker = f"{HOST}:{dead_pid()}"
    sampled = ["model.filters=[8,16]", "model.dropout=0.1", "model.head=gap", "model.fc=[]",
               "optimizer.lr=0.003"]  # fmt: skip

    # 0: Ctrl-C; Optuna heard FAIL, but the MLflow store was still locked by the cut call
    # (the CI failure): the trial had no run yet, and its worker could not record one.
    cut = study.ask()
    for key, value in {"worker": worker, "overrides": sampled, "params": 5_402,
                       "reason": "interrupted (Ctrl-C)"}.items():  # fmt: skip
        cut.set_user_attr(key, value)
    study.tell(cut, state=TrialState.FAIL)
    # 1: kill -9 before its run existed; 2: kill -9 between ask and noting its worker.
    study.ask().set_user_attr("worker", worker)
    study.ask()
    # 3: trained, Optuna told COMPLETE, killed before its run was tagged and ended.
    trained = study.ask()
    for key, value in {"worker": worker, "overrides": sampled, "params": 5_402,
                       "val_acc": 0.8}.items():  # fmt: skip
        trained.set_user_attr(key, value)
    run_id = client.create_run(experiment_id, tags={
        "mlflow.parentRunId": parent_id, "role": "trial", "optuna.study": "quick",
        "optuna.trial": "3"}).info.run_id  # fmt: skip
    client.log_metric(run_id, "val_acc", 0.8)
    trained.set_user_attr("mlflow_run_id", run_id)
    study.tell(trained, [0.8, 5_402])

    # The same command resumes: nothing is left to train (4 trials), every trial gets its run.
    result = run_cli("fmnist_lab.sweep", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming: trials [1, 2] were left running by a killed sweep" in result.stdout
    assert "resuming: the MLflow runs of trials [0, 3] recorded" in result.stdout
    trials = load(tmp_path, "quick").get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    runs = {int(r.data.tags["optuna.trial"]): r for r in runs_by_role(uri, "quick")["trial"]}
    assert len(runs_by_role(uri, "quick")["trial"]) == 4 and sorted(runs) == [0, 1, 2, 3]
    for number, run in runs.items():
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["optuna.state"] == trials[number].state.name
        assert run.data.tags.get("optuna.reason") == trials[number].user_attrs.get("reason")
    assert [runs[n].info.status for n in range(4)] == ["KILLED", "FAILED", "FAILED", "FINISHED"]
    # What a trained trial's run says of itself, as far as the trial got: config and size.
    assert runs[0].info.run_name == "t0-5k"
    assert runs[0].data.params["model.filters"] == "[8, 16]" and runs[0].data.metrics["params"]
    assert "params" not in runs[0].data.params  # a metric only: it sorts by value
    assert runs[0].data.tags["failure_reason"] == "interrupted (Ctrl-C)"
    assert "worker process died" in runs[1].data.tags["optuna.reason"]
    assert runs[3].info.run_id == run_id and runs[3].data.metrics["val_acc"] == 0.8

    # Nothing is recorded twice: a second look finds every trial recorded.
    study = load(tmp_path, "quick")
    ctx = WorkerContext(cfg, overrides, parent_id, uri, None, storage, study.user_attrs["uid"])
    again = reconcile(ctx, study)
    assert again.failed == again.recorded == again.ended == []
    assert len(runs_by_role(uri, "quick")["trial"]) == 4
    assert {r.data.tags["study_uid"] for r in runs_by_role(uri, "quick")["trial"]} == {
        study.user_attrs["uid"]
    }


@pytest.mark.slow
def test_two_workers_on_a_postgresql_storage_finish_exactly_n_trials(small_sweep_env, postgres_url):
    tmp_path, _, args = small_sweep_env
    result = run_cli(
        "fmnist_lab.sweep", "sweep=quick", *args, "workers=2", f"storage={postgres_url}",
        "sweep.budget.n_trials=5", "sweep.budget.epochs=1", "sweep.finalists.seeds=0",
        "sweep.log_models=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="quick", storage=postgres_url)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(5))
    # The quick sweep's 100 k parameter budget may end a trial before training; none fails.
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert any(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert "exceed the budget" in t.user_attrs["reason"]
    assert not (tmp_path / "outputs" / "sweeps" / "quick" / "optuna.journal").exists()


def test_workers_share_several_gpus_round_robin():
    assert gpu_count("cpu") == 0
    assert [gpu_for_worker(i, 0) for i in range(3)] == [None] * 3  # CPU
    assert [gpu_for_worker(i, 1) for i in range(3)] == [None] * 3  # all on the one GPU
    assert [gpu_for_worker(i, 2) for i in range(5)] == [0, 1, 0, 1, 0]
    assert [gpu_for_worker(i, 4) for i in range(6)] == [0, 1, 2, 3, 0, 1]
