"""The MLflow UI's first look at a sweep, as a new user meets it: a real small sweep through the
CLI, a real `mlflow server` on its store, and headless Chromium with a fresh profile (nothing
set in its local storage by the test) clicking from the experiments list to the saved view of
fmnist_lab.ui. Plus the tags that prepare the experiment, on a store of an earlier version."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from pathlib import Path

import pytest
from mlflow import MlflowClient

from fmnist_lab import tracking, ui

from .conftest import CHROMIUM, free_port, playwright_or_skip, run_cli


def test_a_store_of_an_earlier_version_gets_this_view_and_the_link(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    old = client.create_experiment("quick", tags={f"{ui.TAG_PREFIX}fmnist-lab": "{}"})
    user = client.create_experiment("mine", tags={ui.NOTE_TAG: "My own notes."})

    tracking.configure(uri, "quick")
    tags = client.get_experiment(old).tags
    assert f"{ui.TAG_PREFIX}fmnist-lab" not in tags  # the earlier view is gone from the menu
    view = json.loads(tags[ui.VIEW_TAG])
    assert view["name"] == ui.VIEW_NAME and json.loads(view["state"]) == ui.VIEW_STATE
    assert f"#/experiments/{old}/runs?viewStateShareKey={ui.VIEW_ID}&" in tags[ui.NOTE_TAG]

    tracking.configure(uri, "mine")
    tags = client.get_experiment(user).tags
    assert ui.VIEW_TAG in tags and tags[ui.NOTE_TAG] == "My own notes."  # theirs stays


@pytest.fixture
def swept(tmp_path, small_data):
    """A real `sweep=quick` on the small generated data, small enough for CI: 5 trials of one
    epoch on 4 % of the images, 2 finalists of one seed; its runs by role."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli(
        "fmnist_lab.sweep", "sweep=quick", *small_data.cfg_overrides(), f"tracking.uri={uri}",
        "data.val_size=1000", "sweep.budget.train_fraction=0.04", "sweep.budget.n_trials=5",
        "sweep.budget.epochs=1", "sweep.finalists.top_k=2", "sweep.finalists.seeds=1",
        "sweep.finalists.epochs=1", "registry.enabled=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quick")
    roles: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        roles.setdefault(run.data.tags.get("role"), []).append(run)
    return uri, exp, roles


@pytest.fixture
def mlflow_ui(swept, tmp_path):
    """`mlflow server` on the sweep's store, as `mlflow ui` serves it; its address."""
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    with log.open("w") as out:  # a file, not a pipe: a pipe nobody reads fills and blocks it
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
             swept[0], "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not health(url, proc):
            pytest.fail(f"mlflow server did not answer:\n{log.read_text()[-3000:]}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers
        proc.wait(timeout=30)


def health(url: str, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def where(page, tmp_path: Path) -> str:
    """Where the browser is, for a failure: its address, a screenshot and the page's text."""
    shot = tmp_path / "where.png"
    page.screenshot(path=str(shot), full_page=True)
    text = " ".join(page.locator("body").inner_text().split())
    return f"at {page.url}, screenshot {shot}; the page reads: {text[:1500]}"


CHART = """([x, y]) => {
    const plot = [...document.querySelectorAll('.js-plotly-plot')].find(g => g._fullLayout
        && g._fullLayout.xaxis.title.text === x && g._fullLayout.yaxis.title.text === y);
    if (!plot || !plot.data || !plot.data.length) return null;
    return {ids: plot.data[0].customdata.map(c => c[0]), x: plot.data[0].x,
            points: plot.querySelectorAll('.scatterlayer .point').length,
            xtype: plot._fullLayout.xaxis.type};
}"""


@pytest.fixture
def sync_api():
    """Playwright, or the skip, before the sweep fixture spends a minute on a machine
    without a browser."""
    return playwright_or_skip()


@pytest.mark.slow
def test_a_fresh_browser_reaches_size_vs_accuracy_from_the_experiments_list(
    sync_api, swept, mlflow_ui, tmp_path
):
    _, exp, roles = swept
    trials, finalists = roles["trial"], roles["finalist"]
    params = {r.info.run_name: r.data.metrics["params"] for r in trials + finalists}
    # Every trial that was trained and every finalist: a point each; both accuracies by the
    # metric names the sweep logs (test_acc on a finalist is its mean over seeds).
    trained = [r for r in trials if "val_acc" in r.data.metrics]
    assert len(trained) >= 2 and finalists

    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage"])  # fmt: skip
        try:
            context = chromium.new_context(viewport={"width": 1600, "height": 1000})
            page = context.new_page()
            page.goto(f"{mlflow_ui}/#/experiments")
            # Click 1: the experiment. A fresh browser lands on MLflow's GenAI overview.
            page.get_by_test_id("experiment-list-item-link").filter(has_text="quick").click()
            # Click 2: "Got it". MLflow's one-time guidance ("Detect Issues in Your Traces") is
            # modal: a fresh browser must dismiss it before anything else on the page takes a
            # click, and while it is open the page behind it is hidden from the accessibility
            # tree (the link is found by role only once it is gone). It opens a moment after the
            # page, so waiting for the link alone raced it (CI failed on stop 34).
            link = page.get_by_role("link", name=ui.LINK_TEXT)
            got_it = page.get_by_role("button", name="Got it")
            try:
                got_it.or_(link).first.wait_for(timeout=60_000)
                with suppress(sync_api.TimeoutError):
                    got_it.click(timeout=10_000)
                link.wait_for(timeout=30_000)
            except sync_api.TimeoutError:
                pytest.fail(f"no link to the view: {where(page, tmp_path)}")
            # Click 3: the description's link, which opens the saved view in a new tab.
            with context.expect_page() as opened:
                link.click()
            page = opened.value
            assert f"viewStateShareKey={ui.VIEW_ID}" in page.url

            page.wait_for_function(CHART, arg=["params_log10", "val_acc"], timeout=90_000)
            page.wait_for_timeout(1_000)  # plotly's last layout pass
            val = page.evaluate(CHART, ["params_log10", "val_acc"])
            test = page.evaluate(CHART, ["params_log10", "test_acc"])
            shot = tmp_path / "mlflow_ui_size_vs_accuracy.png"
            page.screenshot(path=str(shot))
            print(f"screenshot: {shot}")

            assert sorted(val["ids"]) == sorted(r.info.run_id for r in trained + finalists)
            assert val["points"] == len(trained) + len(finalists)
            # Parameters on a log axis: MLflow 3.17's scatter cannot be asked for one, so x is
            # the metric params_log10 on a linear axis (fmnist_lab/ui.py).
            by_id = {r.info.run_id: r.data.metrics["params"] for r in trials + finalists}
            assert val["x"] == pytest.approx([math.log10(by_id[i]) for i in val["ids"]], abs=1e-3)
            assert sorted(test["ids"]) == sorted(r.info.run_id for r in finalists)
            assert val["xtype"] == "linear"

            # The list beside the charts: every trial and finalist, smallest first, the study
            # last (no size), the seed runs left out; nothing folded.
            names = page.locator("a[href*='/runs/']").all_inner_texts()
            assert not {r.info.run_name for r in roles["finalist_seed"]} & set(names)
            listed = [n for n in names if n in params or n == "study-quick"]
            assert sorted(listed) == sorted([*params, "study-quick"])
            assert listed[-1] == "study-quick"
            sizes = [params[n] for n in listed[:-1]]
            assert sizes == sorted(sizes)

            # The table (one more click): the size and accuracy columns, sorted by size.
            page.locator("label:has(input[name='runs-view-mode'][value='TABLE'])").click()
            page.locator(".ag-header-cell[col-id='metrics.`val_acc`']").wait_for()
            headers = page.locator(".ag-header-cell[col-id]").evaluate_all(
                "cells => cells.map(c => c.getAttribute('col-id'))"
            )
            assert set(ui.COLUMNS) <= set(headers)  # in the view's order only when opened here
            column = page.locator(".ag-center-cols-container [col-id='metrics.`params`']")
            shown = [float(t) for t in column.all_inner_texts() if t.strip() not in ("", "-")]
            assert shown == sorted(params.values())
            page.screenshot(path=str(tmp_path / "mlflow_ui_table.png"))
        finally:
            chromium.close()
    assert shot.stat().st_size > 20_000
