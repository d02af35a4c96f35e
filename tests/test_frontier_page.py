"""docs/results.md's frontier: the rows of docs/studies/frontier.yaml are what the recipes
build, and the page's tables are the ones docs/frontier.py makes from them (no hand-copied
figure drifts from the record)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from fmnist_lab.models import build_model, count_params
from fmnist_lab.reproduce import recipes
from fmnist_lab.sweep import fidelity
from fmnist_lab.sweep.record import Record

DOCS = Path(__file__).resolve().parent.parent / "docs"


def frontier_module(name: str = "frontier"):
    spec = importlib.util.spec_from_file_location(name, DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_row_with_a_recipe_has_the_parameters_the_recipe_builds():
    rows = OmegaConf.to_container(OmegaConf.load(DOCS / "studies" / "frontier.yaml"))
    known = recipes()
    checked = 0
    for dataset, entries in rows.items():
        for row in entries:
            m = re.search(r"reproduce (\w+)", row.get("command") or "")
            if m:
                cfg = known[m[1]]
                assert count_params(build_model(cfg.model)) == row["params"], m[1]
                assert cfg.data.name == dataset, m[1]
                checked += 1
    assert checked >= 4  # best_50k, best_500k, best_10k_mnist, search_50k_cpu


def test_the_results_page_shows_the_tables_the_record_makes():
    frontier = frontier_module()
    page = (DOCS / "results.md").read_text()
    rows = OmegaConf.to_container(OmegaConf.load(frontier.ROWS))
    for dataset, entries in rows.items():
        table = frontier.table(frontier.measured(entries) + frontier.public(dataset))
        assert f"<!-- frontier:{dataset} -->\n{table}\n<!-- /frontier:{dataset} -->" in page
    assert "| 31,509 | 30 | 92.59 % +/- 0.10 | 11-19 min a seed" in page  # the search's row


def test_a_kept_study_holds_each_trials_rungs_and_the_searchs_totals(tmp_path, capsys):
    # docs/study_json.py on a real journal: two trials at the 1-epoch rung, one went on to 3
    # and 10 epochs, one draw over the budget ended before training.
    journal = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))  # fmt: skip
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize"])
    for acc, params in [(0.70, 9000), (0.75, 5000)]:
        study.add_trial(create_trial(
            values=[acc], params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"val_acc": acc, "params": params, "rung_epochs": 1,
                        "overrides": ["model.filters=[8]"]}))  # fmt: skip
    study.add_trial(create_trial(
        state=TrialState.PRUNED, params={"x": 0.1}, distributions={"x": FloatDistribution(0, 1)},
        user_attrs={"params": 30000, "reason": "30,000 parameters exceed the budget"}))  # fmt: skip
    for epochs, acc in [(3, 0.8), (10, 0.85)]:
        Record(study).start(fidelity.key(1, epochs))
        Record(study).finish(fidelity.key(1, epochs), {"val_acc": acc})
    frontier_module("study_json").main([
        "--journal", str(journal), "--study", "s", "--command", "c", "--commit", "abc",
        "--hardware", "h", "--recipe", "r", "--pick", "1", "--rungs", "1,10,3"])  # fmt: skip
    kept = json.loads(capsys.readouterr().out)
    assert kept["search"]["trained_per_rung"] == {"1": 2, "3": 1, "10": 1}
    assert kept["search"]["states"] == {"COMPLETE": 2, "PRUNED": 1}
    assert kept["pick"] == {"trial": 1, "params": 5000, "top_rung_val_acc": 0.85, "recipe": "r"}
    assert [t["rung_val_acc"] for t in kept["trials"]] == [
        {"1": 0.7},
        {"1": 0.75, "3": 0.8, "10": 0.85},
        {},
    ]
    assert kept["trials"][2]["reason"] == "30,000 parameters exceed the budget"
