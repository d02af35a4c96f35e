"""The comparison report and the model registry, on a real small sweep's
MLflow store and Optuna journal, and on real training runs; all on small generated data
(tests/small_data.py): what is asserted is the report's and the registry's mechanics, no
accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from fmnist_lab import export
from fmnist_lab.data import load_splits
from fmnist_lab.registry import register_champion
from fmnist_lab.report.runs import pareto_flags

from .conftest import exported_vs_trained, free_port, run_cli
from .small_data import N_TEST
from .test_train import assert_real_png

STUDY = "report_test"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, small_data):
    """A real multi-objective sweep on the small generated data: 6 trials on 2,000 images,
    2 finalists x 2 seeds (on all 6,000)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the store before the workers race for it
    result = run_cli(
        "fmnist_lab.sweep", "sweep=quick", f"study_name={STUDY}", *small_data.cfg_overrides(),
        f"tracking.uri={uri}", "data.val_size=1000", "sweep.budget.train_fraction=0.4",
        "sweep.budget.epochs=1", "sweep.budget.n_trials=6",
        "sweep/sampler=random", "sweep.sampler.seed=1", "workers=2",
        "sweep.finalists.top_k=2", "sweep.finalists.seeds=2", "sweep.finalists.epochs=1",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path, uri, result


def report(tmp_path: Path, uri: str, *args: str):
    return run_cli("fmnist_lab.report", "--tracking-uri", uri, *args, cwd=tmp_path)


def expected_rows(uri: str) -> dict[str, mlflow.entities.Run]:
    """What the report must list, straight from MlflowClient: the study's completed trials
    and its finalists."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    (parent,) = client.search_runs([experiment.experiment_id], "tags.role = 'study'")
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return {
        r.info.run_id: r
        for r in children
        if r.data.tags["role"] == "finalist"
        or (r.data.tags["role"] == "trial" and r.data.tags["optuna.state"] == "COMPLETE")
    }


def test_pareto_flags_on_hand_made_points():
    points = [(100, 0.80), (200, 0.85), (150, 0.79), (300, 0.85), (50, 0.70), (400, None),
              (200, 0.85)]  # fmt: skip
    # (150, .79) loses to (100, .80); (300, .85) to (200, .85); ties dominate neither.
    assert pareto_flags(points) == [True, True, False, False, True, False, True]
    assert pareto_flags([]) == []


@pytest.mark.slow
def test_report_rows_equal_what_mlflow_holds(sweep):
    tmp_path, uri, _ = sweep
    result = report(tmp_path, uri, "--study", STUDY, "--format", "json", "--no-log")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    expected = expected_rows(uri)
    assert {r["run_id"] for r in rows} == set(expected)
    assert sum(r["role"] == "finalist" for r in rows) == 2
    for row in rows:
        run = expected[row["run_id"]]
        metrics = run.data.metrics
        assert row["run"] == run.info.run_name and row["model"] == run.data.tags["model"]
        assert row["params"] == metrics["params"] and row["val_acc"] == metrics["val_acc"]
        assert row["train_time_s"] == metrics["train_time_s"]
        if row["role"] == "finalist":
            assert row["test_acc"] == metrics["test_acc"]
            assert row["test_acc_std"] == metrics["test_acc_std"] and row["n_test"] == 2
        else:
            assert row["test_acc"] is None  # trials never see the test split
    assert [r["params"] for r in rows] == sorted(r["params"] for r in rows)
    flags = pareto_flags([(r["params"], r["val_acc"]) for r in rows])
    assert [r["pareto"] for r in rows] == flags and any(flags)


@pytest.mark.slow
def test_report_formats(sweep):
    tmp_path, uri, _ = sweep
    n = len(expected_rows(uri))
    table = report(tmp_path, uri, "--study", STUDY, "--no-log")
    assert table.returncode == 0 and "val_acc %" in table.stdout and "+/-" in table.stdout
    markdown = report(tmp_path, uri, "--study", STUDY, "--format", "markdown", "--no-log")
    lines = markdown.stdout.strip().splitlines()
    assert lines[0].startswith("| run | model | params |") and len(lines) == n + 2
    csv = report(tmp_path, uri, "--study", STUDY, "--format", "csv", "--no-log")
    frame = pd.read_csv(pd.io.common.StringIO(csv.stdout))
    assert len(frame) == n and {"params", "val_acc", "test_acc", "pareto"} <= set(frame)


@pytest.mark.slow
def test_report_plots_and_study_analyses_are_logged_to_the_parent(sweep):
    tmp_path, uri, _ = sweep
    result = report(tmp_path, uri, "--study", STUDY, "--output", str(tmp_path / "rep"))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "rep"
    assert_real_png(out / "params_vs_accuracy.png", (1100, 650))
    html = (out / "params_vs_accuracy.html").read_text()
    assert "plotly" in html and "Pareto frontier" in html and "R5 Conv2Dsimple2" in html
    importances = json.loads((out / "param_importances.json").read_text())
    assert set(importances) == {"val_acc", "params"}
    assert all(abs(sum(v.values()) - 1) < 1e-6 for v in importances.values())
    assert_real_png(out / "param_importances_val_acc.png", (1000, 600))
    assert_real_png(out / "optimization_history_val_acc.png", (1000, 600))
    assert "Optuna study" in (out / "optuna_study.html").read_text()

    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name(STUDY).experiment_id], "tags.role = 'study'"
    )[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {
        "report/params_vs_accuracy.png", "report/params_vs_accuracy.html",
        "report/param_importances.json", "report/optimization_history_val_acc.png",
    } <= logged  # fmt: skip


@pytest.mark.slow
def test_report_errors_are_one_line(sweep):
    tmp_path, uri, _ = sweep
    missing = report(tmp_path, uri, "--study", "no_such_study")
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "no study 'no_such_study'" in missing.stderr
    run = report(tmp_path, uri, "--runs", "0123abc")
    assert run.returncode == 2 and "no run '0123abc'" in run.stderr
    both = report(tmp_path, uri, "--study", STUDY, "--experiment", STUDY)
    assert both.returncode == 2 and "exactly one" in both.stderr
    target = report(tmp_path, uri, "--study", STUDY, "--target", "94")
    assert target.returncode == 2 and "between 0 and 1" in target.stderr
    # A report only reads: a mistyped store or storage is an error, never a new empty file.
    typo = tmp_path / "mlfow.db"
    store = report(tmp_path, f"sqlite:///{typo}", "--study", STUDY)
    assert store.returncode == 2 and "no MLflow store" in store.stderr and not typo.exists()
    gone = tmp_path / "gone.db"
    storage = report(tmp_path, uri, "--study", STUDY, "--storage", f"sqlite:///{gone}", "--no-log")
    assert storage.returncode == 2 and "could not open study" in storage.stderr
    assert not gone.exists()


@pytest.mark.slow
def test_named_runs_are_listed_even_when_parts_of_others(sweep):
    tmp_path, uri, _ = sweep
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    seed = client.search_runs([experiment.experiment_id], "tags.role = 'finalist_seed'")[0]
    result = report(tmp_path, uri, "--runs", seed.info.run_id, "--format", "json", "--no-log")
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout)
    assert row["run_id"] == seed.info.run_id and row["test_acc"] == seed.data.metrics["test_acc"]


@pytest.mark.slow
def test_champion_is_registered_and_predicts(sweep, make_cfg):
    tmp_path, uri, result = sweep
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    finalists = [r for r in expected_rows(uri).values() if r.data.tags["role"] == "finalist"]
    # Chosen by the validation score that chose the finalists; test accuracy chooses nothing.
    best = max(finalists, key=lambda r: (r.data.metrics.get("rerank_val_acc",
                                                            r.data.metrics["val_acc"]),
                                         -r.data.metrics["params"]))  # fmt: skip
    version = client.get_model_version_by_alias("fmnist-fashion_mnist", "champion")
    assert version.tags["finalist_run"] == best.info.run_id
    assert version.tags["selected_by"] == "val_acc"
    assert version.tags["selection_split"] == "validation"
    assert "val_size=" in version.tags["selection_measure"]
    assert int(version.tags["params"]) == best.data.metrics["params"]
    # The served model is the finalist's seed 0: its own test accuracy and, apart, the
    # finalist's mean over seeds; the version's description says where it comes from.
    (seed0,) = client.search_runs(
        [best.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{best.info.run_id}' and tags.seed = '0'",
    )
    assert version.run_id == seed0.info.run_id
    assert float(version.tags["test_acc"]) == seed0.data.metrics["test_acc"]
    assert float(version.tags["finalist_test_acc"]) == best.data.metrics["test_acc"]
    assert float(version.tags["finalist_test_acc_std"]) == best.data.metrics["test_acc_std"]
    assert version.tags["finalist_seeds"] == "2"
    trial = best.data.tags["optuna.trial"]
    assert f"trial {trial} of study '{STUDY}'" in version.description
    assert "Recipe: model." in version.description and "trainer.max_epochs=" in version.description
    assert f"Test accuracy of this model: {seed0.data.metrics['test_acc']:.2%}" in (
        version.description
    )
    assert "alias 'champion' set" in result.stdout
    # Every finalist run shows the evaluation: summed over seeds, and seed 0's in full.
    artifacts = {a.path for a in client.list_artifacts(best.info.run_id, "evaluation_seed0")}
    assert {"evaluation_seed0/confident_mistakes.png", "evaluation_seed0/learning_curves.png",
            "evaluation_seed0/sample_predictions.png"} <= artifacts  # fmt: skip
    summed = client.download_artifacts(best.info.run_id, "evaluation/confusion_matrix.csv")
    assert pd.read_csv(summed, index_col=0).to_numpy().sum() == 2 * N_TEST  # two seeds

    model = mlflow.pyfunc.load_model("models:/fmnist-fashion_mnist@champion")
    splits = load_splits(make_cfg("data.val_size=0").data)
    probs = model.predict((splits.test_x.float() / 255).numpy())
    accuracy = (probs.argmax(1) == splits.test_y.numpy()).mean()
    seed0 = json.loads(best.data.tags["test_accs"])[0]  # the registered model is seed 0's
    assert accuracy == pytest.approx(seed0, abs=1e-4)


@pytest.mark.slow
def test_alias_moves_only_to_a_better_champion_measured_alike(sweep):
    _, uri, _ = sweep
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    current = client.get_model_version_by_alias("fmnist-fashion_mnist", "champion")
    acc = float(current.tags["val_acc"])
    measure = current.tags["selection_measure"]
    assert current.tags["selected_by"] == "val_acc"

    def register(score: str, value: float, how: str):
        return register_champion(current.source, "fmnist-fashion_mnist", "champion", {}, score,
                                 value, how)  # fmt: skip

    def champion() -> str:
        return str(client.get_model_version_by_alias("fmnist-fashion_mnist", "champion").version)

    worse = register("val_acc", acc - 0.01, measure)
    assert not worse.moved and "stays on version" in worse.describe()
    assert champion() == str(current.version)
    # Higher, but on another split or after other training: not comparable, the alias stays.
    other = register("val_acc", acc + 0.05, measure.replace("val_size=", "val_size=1"))
    assert not other.moved and "do not compare" in other.describe()
    on_test = register("test_acc_mean_on_test_set", 0.99, "fashion_mnist test set")
    assert not on_test.moved and "chosen by val_acc" in on_test.unlike
    assert champion() == str(current.version)
    better = register("val_acc", acc + 0.01, measure)
    assert better.moved and better.previous == (str(current.version), pytest.approx(acc))
    assert champion() == better.version
    versions = client.search_model_versions("name = 'fmnist-fashion_mnist'")
    tags = {str(v.version): v.tags for v in versions}
    assert tags[on_test.version]["selection_split"] == "test"


@pytest.mark.slow
def test_compare_datasets_lines_up_a_config_on_both(tmp_path, small_data):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [*small_data.cfg_overrides(), f"tracking.uri={uri}",
              "tracking.experiment=both", "data.train_fraction=0.02", "data.val_size=500",
              "trainer.max_epochs=1", "log_model=false", "evaluate=false",
              "runtime.progress_bar=false", "model.filters=[8,16]"]  # fmt: skip
    for dataset, seed in (("fashion_mnist", 0), ("fashion_mnist", 1), ("mnist", 0)):
        run = run_cli("fmnist_lab.train", f"data={dataset}", f"seed={seed}", *common, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
    result = run_cli("fmnist_lab.report", "--tracking-uri", uri, "--experiment", "both",
                     "--compare-datasets", "--format", "json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(result.stdout)  # one config, both datasets side by side
    assert row["model"] == "convnet"
    assert "(n=2)" in row["Fashion-MNIST"] and "(n=1)" in row["MNIST"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("both").experiment_id])
    mnist = next(r for r in runs if r.data.tags["dataset"] == "mnist")
    assert row["MNIST"] == f"{100 * mnist.data.metrics['test_acc']:.2f} (n=1)"  # no std of one

    # Datasets never share a frontier: a mixed report asks for one, --data picks it.
    mixed = run_cli("fmnist_lab.report", "--tracking-uri", uri, "--experiment", "both",
                    cwd=tmp_path)  # fmt: skip
    assert mixed.returncode == 2 and "several datasets" in mixed.stderr
    picked = run_cli("fmnist_lab.report", "--tracking-uri", uri, "--experiment", "both",
                     "--data", "fashion_mnist", "--format", "json", cwd=tmp_path)  # fmt: skip
    assert picked.returncode == 0, picked.stderr[-3000:]
    assert {r["dataset"] for r in json.loads(picked.stdout)} == {"fashion_mnist"}

    # A report of MNIST runs draws MNIST's reference results, not Fashion-MNIST's.
    out = tmp_path / "mnist_report"
    result = run_cli("fmnist_lab.report", "--tracking-uri", uri, "--runs", mnist.info.run_id,
                     "--output", str(out), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    html = (out / "params_vs_accuracy.html").read_text()
    assert "(MNIST)" in html and "under 9k params" in html and "R5 Conv2Dsimple2" not in html
    assert_real_png(out / "params_vs_accuracy.png", (1100, 650))


@pytest.mark.slow
def test_optuna_dashboard_opens_the_sweeps_journal(sweep):
    tmp_path, _, _ = sweep
    journal = tmp_path / "outputs" / "sweeps" / STUDY / "optuna.journal"
    port = free_port()
    dashboard = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), str(journal), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline, studies = time.time() + 60, None
        while studies is None and time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies") as reply:
                    studies = json.load(reply)["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "optuna-dashboard did not answer"
        assert [s["study_name"] for s in studies] == [STUDY]
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


@pytest.mark.slow
def test_export_writes_a_finalist_as_an_experiment_that_composes_to_its_config(sweep, tmp_path):
    study_dir, uri, _ = sweep
    mlflow.set_tracking_uri(uri)  # for runs:/ URIs, whichever tests ran before
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(STUDY)
    finalists = [
        r
        for r in client.search_runs([experiment.experiment_id], "tags.role = 'finalist'")
        if r.info.status == "FINISHED"
    ]
    assert len(finalists) == 2
    smallest = min(finalists, key=lambda r: r.data.metrics["params"])
    on_val = max(finalists, key=lambda r: (r.data.metrics["val_acc"], -r.data.metrics["params"]))
    out = tmp_path / "experiment"
    args = ("--study", STUDY, "--tracking-uri", uri, "--out", str(out))
    budget = int(smallest.data.metrics["params"])
    result = run_cli("fmnist_lab.export", *args, f"best_small={budget}", "best_any=1e7",
                     cwd=study_dir)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]

    for name, run in (("best_small", smallest), ("best_any", on_val)):
        text = (out / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_\n")
        comments = [line for line in text.splitlines() if line.startswith("#")]
        assert len(comments) == 2  # the package line, then one line of provenance
        assert f"Trial {run.data.tags['optuna.trial']} of study" in comments[1]
        composed, original, reference = exported_vs_trained(out, name, run.info.run_id, uri)
        # `train experiment=<name>` trains what the finalist's seeds trained (on every training
        # image: no validation split), less the machine's folders, threads, store and seed.
        assert composed == original
        assert composed["data"]["val_size"] == 0
        accs = json.loads(run.data.tags["test_accs"])
        assert reference["params"] == run.data.metrics["params"]
        assert reference["test_acc"] == pytest.approx(sum(accs) / len(accs), abs=1e-6)

    # --chosen: the same two, from the study's trials as the sweep chooses them, before any
    # finalist trained: the config built from each trial's own run is the one its seeds got.
    result = run_cli("fmnist_lab.export", *args, "--chosen", f"chosen_small={budget}",
                     "chosen_any=1e7", cwd=study_dir)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    for name, run in (("chosen_small", smallest), ("chosen_any", on_val)):
        text = (out / f"{name}.yaml").read_text()
        assert "before its seeds trained: fmnist-lab export --chosen" in text.splitlines()[1]
        composed, original, reference = exported_vs_trained(out, name, run.info.run_id, uri)
        assert composed == original
        assert reference["test_acc"] is None
        assert reference["chosen_val_acc"] == pytest.approx(run.data.metrics["val_acc"], abs=1e-6)

    # Refusals: one line, exit 2, and no file written unless every budget has its finalist.
    for extra, message in [
        (("best_small=1000",), f"{out / 'best_small.yaml'} exists; --force replaces it"),
        (("--force", "best_new=1e7", "best_tiny=10"), "no finalist of 'report_test' has at "
         f"most 10 parameters (the smallest has {budget:,})"),
        (("best=big",), "'best=big' is not NAME=MAX_PARAMS, e.g. best_50k=50000"),
    ]:  # fmt: skip
        result = run_cli("fmnist_lab.export", *args, *extra, cwd=study_dir)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (out / "best_new.yaml").exists()
    result = run_cli("fmnist_lab.export", "--study", "nope", "--tracking-uri", uri, "x=1",
                     cwd=study_dir)  # fmt: skip
    assert result.returncode == 2 and "no study 'nope'" in result.stderr


def test_export_picks_a_reranked_finalist_by_its_longer_validation(tmp_path):
    """After `finalists.rerank`, finalists are compared by the validation accuracy of the
    longer training, not by the short trial's."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("picks")
    for params, val, longer in [(30_000, 0.87, 0.91), (45_000, 0.86, 0.94), (90_000, 0.88, 0.93)]:
        run = client.create_run(experiment)
        for key, value in (("params", params), ("val_acc", val), ("rerank_val_acc", longer)):
            client.log_metric(run.info.run_id, key, value)
    runs = client.search_runs([experiment])
    assert export.pick(runs, 50_000).data.metrics["params"] == 45_000
    assert export.pick(runs, 100_000).data.metrics["params"] == 45_000
    assert export.pick(runs, 40_000).data.metrics["params"] == 30_000
    assert export.pick(runs, 20_000) is None
