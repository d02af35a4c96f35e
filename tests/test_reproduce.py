"""`python -m fmnist_lab.reproduce`: reference recipes, seeds, resume, and the table, on the
real data with a real MLflow store (shortened recipes: the full ones are docs/results.md's)."""

from __future__ import annotations

import re
import statistics
import sys

import pytest
from mlflow import MlflowClient

from fmnist_lab import resume
from fmnist_lab.models import build_model, count_params
from fmnist_lab.reproduce import main, recipes

from .conftest import run_cli

SHORT = ["--set", "data.train_fraction=0.05", "trainer.max_epochs=1", "evaluate=false",
         "log_model=false"]  # fmt: skip


@pytest.fixture
def env(data_root, cache_dir):
    return {"FMNIST_LAB_DATA": str(data_root), "FMNIST_LAB_CACHE": str(cache_dir)}


def runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("references")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_every_reference_of_the_issue_has_a_recipe_with_its_reported_figures():
    found = {n: cfg for n, cfg in recipes().items() if not n.startswith(("best_", "search_"))}
    assert set(found) == {"r1_mlp", "r2_mlp", "r3_cnn", "r5_conv2dnet", "r5_inception_cnn",
                          "r5_conv2dsimple", "r5_conv2dsimple2", "r5_conv2dsimple3"}  # fmt: skip
    reported = {name: cfg.reference for name, cfg in found.items()}
    assert reported["r2_mlp"].test_acc == 0.8871 and reported["r2_mlp"].params == 238_314
    assert reported["r5_conv2dsimple2"].test_acc == 0.936
    assert reported["r5_inception_cnn"].test_acc is None and reported["r5_inception_cnn"].val_acc


def test_the_frontier_winners_build_the_model_they_claim_within_their_budget():
    # best_*: hand-made; search_*: the search's own finalists (a test figure once measured)
    winners = {n: cfg for n, cfg in recipes().items() if n.startswith(("best_", "search_"))}
    assert {"best_50k", "best_500k", "best_10k_mnist", "search_50k_cpu"} <= set(winners)
    for name, cfg in winners.items():
        budget = int(re.match(r"(?:best|search)_(\d+)k", name).group(1)) * 1000
        params = count_params(build_model(cfg.model))
        assert params == cfg.reference.params <= budget, name
        assert cfg.reference.test_acc is None or 0 < cfg.reference.test_acc < 1, name
    assert winners["best_10k_mnist"].data.name == "mnist"
    assert winners["best_50k"].data.name == winners["best_500k"].data.name == "fashion_mnist"


def test_the_tables_need_no_plotly(tmp_path, capsys, monkeypatch):
    # The GPU session's machine has no plotly: the table each training process prints at its
    # end must not import it, nor the Markdown one (fmnist_lab.tables, not the report's plots).
    monkeypatch.setitem(sys.modules, "plotly", None)
    main(["best_500k", "--table-only", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert "best_500k: residual ConvNet" in capsys.readouterr().out
    main(["best_500k", "--table-only", "--format", "markdown",
          "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])  # fmt: skip
    assert "| best_500k: residual ConvNet" in capsys.readouterr().out


@pytest.mark.slow
def test_seeds_are_trained_once_and_tabled_next_to_the_reported_figure(tmp_path, env):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Seeds 0 and 1 of three (as one of several processes would: --only-seeds).
    first = run_cli("fmnist_lab.reproduce", "r2_mlp", "--seeds", "3", "--only-seeds", "1", "0",
                    "--tracking-uri", uri, *SHORT, cwd=tmp_path, env=env)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"^r2_mlp seed 0: test accuracy 0\.\d{4}", first.stdout, re.M)
    assert re.search(r"^r2_mlp seed 1: test accuracy 0\.\d{4}", first.stdout, re.M)
    recorded = runs(uri)
    assert len(recorded) == 2
    assert {r.data.params["seed"] for r in recorded} == {"0", "1"}
    assert {r.data.tags["reproduce"] for r in recorded} == {"r2_mlp"}
    assert all(r.info.status == "FINISHED" for r in recorded)
    # Each seed saved itself after every epoch, as a resumable training does, and removed the
    # checkpoint once it finished (a seed killed and resumed: tests/test_resume.py, on train).
    assert len({r.data.tags[resume.KEY_TAG] for r in recorded}) == 2
    assert not list((tmp_path / "outputs" / "checkpoints").glob("*.ckpt*"))
    assert list((tmp_path / "outputs" / "checkpoints").glob("*.lock"))

    # Again for all three seeds: only the third is trained.
    again = run_cli("fmnist_lab.reproduce", "r2_mlp", "--seeds", "3", "--tracking-uri", uri,
                    "--format", "markdown", *SHORT, cwd=tmp_path, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "r2_mlp seed 0: already recorded" in again.stdout
    assert "r2_mlp seed 1: already recorded" in again.stdout
    assert re.search(r"^r2_mlp seed 2: test accuracy", again.stdout, re.M)
    recorded = runs(uri)
    assert len(recorded) == 3
    accs = [r.data.metrics["test_acc"] for r in recorded]
    row = next(line for line in again.stdout.splitlines() if line.startswith("| R2 MLP"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "r2_mlp (" + " ".join(sorted(SHORT[1:])) + ")"  # a changed recipe says so
    assert cells[2] == "238,314" and cells[3] == "238,314" and cells[5] == "88.71%"
    mean, std = statistics.fmean(accs), statistics.stdev(accs)
    assert cells[4] == f"{mean:.2%} +/- {std:.2%} (n=3)"
    assert cells[6].startswith(f"{(mean - 0.8871) * 100:+.2f} pts")

    # The table alone trains nothing; the full recipe (no overrides) has no runs yet.
    table = run_cli("fmnist_lab.reproduce", "r2_mlp", "--table-only", "--tracking-uri", uri,
                    cwd=tmp_path, env=env)  # fmt: skip
    assert table.returncode == 0, table.stderr[-3000:]
    assert re.search(r"^R2 MLP 784-256-128-32-10\s+r2_mlp\s+238,314\s+238,314\s+not run",
                     table.stdout, re.M)  # fmt: skip
    assert len(runs(uri)) == 3


@pytest.mark.slow
def test_a_seed_counts_only_if_trained_with_the_settings_the_recipe_has_now(tmp_path, env):
    # A recipe file that changes (best_50k went from 60 to 90 epochs) must not pass off the
    # runs of its earlier settings as its own: seeds match on the settings they logged.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    two = [a.replace("max_epochs=1", "max_epochs=2") for a in SHORT]

    def reproduce(*args):
        result = run_cli("fmnist_lab.reproduce", "r2_mlp", "--seeds", "1", "--tracking-uri",
                         uri, *args, cwd=tmp_path, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def row(stdout):
        return next(line for line in stdout.splitlines() if line.startswith("R2 MLP"))

    first = re.search(r"^r2_mlp seed 0: test accuracy (0\.\d+), .*\(run (\w+)\)",
                      reproduce(*two), re.M)  # fmt: skip
    (old_id,) = [r.info.run_id for r in runs(uri)]
    assert first.group(2) == old_id

    again = reproduce(*SHORT)  # one epoch now: the two-epoch run is not this recipe's
    assert (f"r2_mlp seed 0: run {old_id} was trained with other settings "
            "(trainer.max_epochs=2 (now 1)); training it again") in again  # fmt: skip
    second = re.search(r"^r2_mlp seed 0: test accuracy (0\.\d+), .*\(run (\w+)\)", again, re.M)
    assert second.group(2) != old_id and len(runs(uri)) == 2
    assert f"{float(second.group(1)):.2%} (n=1)" in row(again)

    # The same settings reached another way (the recipe's own lr, set again) are recorded.
    same = reproduce(*SHORT, "optimizer.lr=0.02")
    assert "r2_mlp seed 0: already recorded" in same and len(runs(uri)) == 2
    assert f"{float(second.group(1)):.2%} (n=1)" in row(same)
    # And the earlier settings still find their own run.
    table = reproduce(*two, "--table-only")
    assert f"{float(first.group(1)):.2%} (n=1)" in row(table) and len(runs(uri)) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["r9_nope"], "no reference recipe r9_nope; known: best_10k_mnist, best_500k, best_50k"),
        (["r2_mlp", "--set", "trainer.max_epoch=1"],
         "cannot compose experiment=r2_mlp: Could not override 'trainer.max_epoch'"),
        (["r2_mlp", "--seeds", "0"], "--seeds 0 must be at least 1"),
        (["r2_mlp", "--only-seeds", "3"], "--only-seeds 3: not among the seeds 0..2 of --seeds 3"),
        (["r2_mlp", "--set", "seed=7"], "this command sets seed itself; use --seeds instead"),
        (["--set", "data=mnist", "r2_mlp"], "use --data instead"),
        (["--set", "trainer.max_epochs=1", "r2_mlp"], "'r2_mlp' is not one"),
        (["r2_mlp", "--set", "lr_scaling.rule=cubic"], "lr_scaling.rule=cubic: must be"),
        (["r2_mlp", "--set", "model.hidden=[-1]"], "experiment=r2_mlp: model 'mlp_r2' cannot be"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_records_nothing(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exited:  # in this process: the checks need no subprocess
        main([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "mlflow.db").exists()
