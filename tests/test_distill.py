"""Knowledge distillation (`distill.teacher`): a student learns a logged model's soft labels.
Real data (what a student learns; the refusals on small generated data), real MLflow store;
the teacher is a real logged model whose answer is known."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_uri_state
from torch import nn

from fmnist_lab import tracking
from fmnist_lab.models import build_model, count_params
from fmnist_lab.models.predictor import Predictor
from fmnist_lab.train import train

from .conftest import run_cli

STUDENT = [
    "model=convnet_20k", "data.train_fraction=0.05", "data.val_size=1000",
    "trainer.max_epochs=2", "runtime.progress_bar=false", "evaluate=false", "log_model=false",
]  # fmt: skip
SAID = 3  # the class the constant teacher names for every image: 1,000 of the 10,000 tests


def log_constant_teacher(classes: int) -> str:
    """A logged model that ignores the image and gives class SAID probability ~0.9999."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, classes))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.copy_(10.0 * nn.functional.one_hot(torch.tensor(SAID), classes))
    with mlflow.start_run(run_name="constant-teacher"):
        return tracking.log_model(Predictor(net, 0.5, 0.5), torch.rand(2, 1, 28, 28))


@pytest.fixture(autouse=True)
def keep_tracking_uri():
    """`train` points MLflow at its store; later test modules must not inherit it."""
    before = tracking_uri_state._tracking_uri
    yield
    tracking_uri_state._tracking_uri = before


@pytest.fixture(scope="module")
def teacher_store(tmp_path_factory) -> tuple[str, str, str]:
    """A store holding the constant teacher and a 5-class one; their model URIs."""
    home = tmp_path_factory.mktemp("teacher")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    # The artifacts beside the store (MLflow's default would be ./mlruns of the checkout).
    MlflowClient(uri).create_experiment("teachers", artifact_location=str(home / "mlruns"))
    with tracking_uri_state._use_tracking_uri(uri):
        mlflow.set_experiment("teachers")
        return uri, log_constant_teacher(10), log_constant_teacher(5)


def students(uri: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name("fmnist_lab")
    return client.search_runs([found.experiment_id]) if found else []


def all_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
def test_student_follows_the_teacher_as_far_as_alpha_says(
    teacher_store, make_real_cfg, data_root, cache_dir, tmp_path
):
    uri, teacher, _ = teacher_store
    # alpha 1: the labels carry no weight, the student learns to name class SAID for
    # every image, as the teacher does: right on exactly the test images of that class.
    result = run_cli("fmnist_lab.train", *STUDENT, f"distill.teacher='{teacher}'",
                     "distill.alpha=1", "distill.temperature=1", f"tracking.uri={uri}",
                     f"data.root={data_root}", f"data.cache_dir={cache_dir}",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = students(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["distill.teacher"] == teacher
    assert run.data.params["distill.alpha"] == "1"
    assert run.data.metrics["test_acc"] == pytest.approx(0.10, abs=0.005)
    # The teacher is not counted: the parameter count is the student's alone.
    assert run.data.metrics["params"] == count_params(build_model(make_real_cfg(*STUDENT).model))

    # alpha 0: the teacher's term weighs nothing, the labels teach as without a teacher.
    cfg = make_real_cfg(*STUDENT, f"distill.teacher='{teacher}'", "distill.alpha=0",
                        f"tracking.uri={uri}")  # fmt: skip
    alone = train(cfg).metrics["test_acc"]
    assert alone > 0.6
    # In between, both pull: the student is better than the teacher, worse than alone.
    cfg = make_real_cfg(*STUDENT, f"distill.teacher='{teacher}'", "distill.alpha=0.5",
                        f"tracking.uri={uri}")  # fmt: skip
    assert 0.10 < train(cfg).metrics["test_acc"] < alone


@pytest.mark.slow  # four training CLIs against real logged teachers (small data)
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("distill.teacher=/nonexistent/model", "distill.teacher '/nonexistent/model' does not "
         "load as a model: "),
        ("distill.teacher=<FIVE>", "distill.teacher '<FIVE>' predicts (5,) outputs per image; "
         "this dataset has 10 classes"),
        ("distill.alpha=1.5", "distill.alpha=1.5: must be less than or equal to 1"),
        ("distill.temperature=0", "distill.temperature=0: must be greater than 0"),
    ],
)  # fmt: skip
def test_bad_teacher_exits_2_and_records_nothing(
    teacher_store, small_data, tmp_path, override, message
):
    uri, teacher, five = teacher_store
    override, message = override.replace("<FIVE>", five), message.replace("<FIVE>", five)
    if not override.startswith("distill.teacher"):
        override = f"{override} distill.teacher='{teacher}'"
    before = {run.info.run_id: run.info.status for run in all_runs(uri)}
    result = run_cli("fmnist_lab.train", *STUDENT, *override.split(), f"tracking.uri={uri}",
                     *small_data.cfg_overrides(), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {message}")
    assert {run.info.run_id: run.info.status for run in all_runs(uri)} == before
