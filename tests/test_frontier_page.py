"""docs/results.md's frontier: the rows of docs/studies/frontier.yaml are what the recipes
build, and the page's tables are the ones docs/frontier.py makes from them (no hand-copied
figure drifts from the record)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from omegaconf import OmegaConf

from fmnist_lab.models import build_model, count_params
from fmnist_lab.reproduce import recipes

DOCS = Path(__file__).resolve().parent.parent / "docs"


def frontier_module():
    spec = importlib.util.spec_from_file_location("frontier", DOCS / "frontier.py")
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
