"""Screenshots of the real MLflow UI showing a real sweep, for the documentation.

Starts ``mlflow server`` on a free local port against an existing tracking store, finds the
experiment's study, trial, finalist and finalist-seed runs with ``MlflowClient``, and saves
seven PNGs taken with headless Chromium (driven by Playwright) into ``--out``. The browser
starts with a fresh profile, nothing set in its local storage, and goes the way a new user
does: the experiments list, the experiment, the link in its description.

- ``mlflow-overview.png``: where a click on the experiment lands in a fresh browser (MLflow's
  GenAI overview, its one-time "Detect Issues" guidance open), the description's link on top;
- ``mlflow-chart.png``: the link's page, the saved view "fmnist_lab: size vs accuracy": every
  trial and finalist smallest first, scatters of ``params`` against ``val_acc`` and ``test_acc``;
- ``mlflow-runs.png``: the same view as a table (its table button): size and accuracy columns;
- ``mlflow-compare.png``: the compare-runs page of the trial runs (parallel coordinates etc.);
- ``mlflow-run.png``: one finalist seed run's page;
- ``mlflow-run-artifacts.png``: a finalist seed run's artifacts, its confusion matrix open;
- ``mlflow-study-report.png``: the study run's ``report/params_vs_accuracy.png``.

The view and the description are the experiment tags of ``fmnist_lab.ui.prepare``; a store
written before them gets them here first.

Prerequisites (once; Playwright must not download browsers, it drives Debian's Chromium)::

    apt-get install -y chromium
    .venv/bin/pip install playwright

Run, on a store written by ``python -m fmnist_lab.sweep sweep=quick`` in /tmp/shots::

    .venv/bin/python docs/screenshots.py --tracking-uri sqlite:////tmp/shots/mlflow.db \\
        --experiment quick --out docs/img

Exit code 2, with one line on stderr, when Chromium or Playwright is missing, the SQLite file
does not exist, or the store has no such experiment (or no runs in it). The server is always
stopped at the end, error or not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import mlflow

from fmnist_lab import ui

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
except ImportError:  # reported by main() as a missing prerequisite
    PlaywrightTimeout = TimeoutError


class Unusable(Exception):
    """A missing prerequisite or experiment: reported in one line, exit code 2."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_store(tracking_uri: str) -> None:
    # Opening a SQLite URI that names no file silently creates an empty store.
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise Unusable(f"no tracking store at {path} ({tracking_uri})")


def find_runs(client, experiment_name: str):
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise Unusable(f"no experiment {experiment_name!r} in the store (it has: {names})")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    if not runs:
        raise Unusable(f"experiment {experiment_name!r} has no runs")
    by_role: dict[str, list] = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get("role", "run"), []).append(run)
    return exp, by_role


def start_server(tracking_uri: str, port: int, workdir: str) -> subprocess.Popen:
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli)] if mlflow_cli.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]  # fmt: skip
    # Own session: the server forks workers, and the whole group must go at the end. Its cwd
    # is a scratch dir because the server creates ./mlartifacts there.
    with (Path(workdir) / "server.log").open("w") as log:  # the child keeps its own copy
        return subprocess.Popen(cmd, cwd=workdir, start_new_session=True, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip


def wait_for_server(proc: subprocess.Popen, base: str, workdir: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (Path(workdir) / "server.log").read_text()[-2000:]
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server did not answer at {base} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def settle(page, text: str | None = None, selector: str | None = None) -> None:
    """Wait until the SPA has fetched and drawn: a text or selector that only the rendered page
    has, then no loading spinner, then a beat for plotly's layout and the table's columns."""
    # Never "networkidle" alone: the runs page polls for new runs every few seconds.
    try:
        page.wait_for_load_state("networkidle", timeout=5_000)
    except PlaywrightTimeout:
        pass
    waits = []
    if text:
        waits.append((page.get_by_text(text, exact=False), repr(text)))
    if selector:
        waits.append((page.locator(selector), selector))
    for locator, what in waits:
        try:
            locator.first.wait_for(timeout=60_000)
        except PlaywrightTimeout:  # still worth a screenshot, to see what the page shows
            print(f"note: {page.url} never showed {what}", file=sys.stderr)
    spinner = page.locator(
        '[data-testid="loading-spinner"], .ant-spin-spinning, [role="progressbar"]'
    )
    try:
        spinner.first.wait_for(state="hidden", timeout=30_000)
    except PlaywrightTimeout:  # a spinner that never leaves is a screenshot worth seeing anyway
        pass
    page.wait_for_timeout(2_000)


def add_compare_metric(page, metric: str) -> None:
    """Add a metric axis to the compare page's parallel coordinates plot, which starts with
    the parameters and only the first metric (here ``params``, not the accuracy)."""
    box = page.get_by_text("Metrics:", exact=True).locator("xpath=following::input[1]")
    try:
        box.click(timeout=10_000)
        box.fill(metric)
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")
        page.mouse.click(5, 5)  # close the dropdown for good
    except PlaywrightTimeout:
        print(f"note: could not add {metric} to the compare plot", file=sys.stderr)


def shoot(args, exp, by_role, base: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eid = exp.experiment_id
    trials = [r.info.run_id for r in by_role.get("trial", [])]
    finalists = [r.info.run_id for r in by_role.get("finalist", [])]
    seeds = by_role.get("finalist_seed", [])
    study = by_role.get("study", [])
    saved: list[Path] = []

    with sync_playwright() as pw:
        # --no-sandbox: Chromium refuses its sandbox as root, the usual case in containers.
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])  # fmt: skip
        try:
            ctx = browser.new_context(viewport={"width": args.width, "height": args.height})
            page = ctx.new_page()

            def save(name: str) -> None:
                path = out / name
                page.screenshot(path=str(path))
                saved.append(path)
                print(f"wrote {path}")

            # The way a new user goes: the experiments list, the experiment, where a fresh
            # browser lands (MLflow's GenAI overview), the link in the description.
            page.goto(f"{base}/#/experiments")
            settle(page, text=exp.name)
            names = page.get_by_test_id("experiment-list-item-link")
            names.filter(has_text=re.compile(f"^{re.escape(exp.name)}$")).first.click()
            settle(page, text=ui.LINK_TEXT)
            save("mlflow-overview.png")
            link = page.get_by_role("link", name=ui.LINK_TEXT)
            if link.count():
                got_it = page.get_by_role("button", name="Got it")  # MLflow's modal guidance
                if got_it.count():
                    got_it.first.click()
                with ctx.expect_page() as opened:  # the description's links open a new tab
                    link.first.click()
                page = opened.value
            else:  # the user has a description of their own
                page.goto(f"{base}/{ui.view_url(eid)}")
            settle(page, selector=".js-plotly-plot")
            save("mlflow-chart.png")

            page.locator("label:has(input[name='runs-view-mode'][value='TABLE'])").click()
            settle(page, selector=".ag-header-cell[col-id='metrics.`params`']")
            save("mlflow-runs.png")

            compare = trials or finalists
            if compare:
                runs_q = quote(json.dumps(compare, separators=(",", ":")))
                exps_q = quote(json.dumps([eid]))
                page.goto(f"{base}/#/compare-runs?runs={runs_q}&experiments={exps_q}")
                settle(page, selector=".js-plotly-plot")
                add_compare_metric(page, "val_acc")
                settle(page, selector=".js-plotly-plot")
                save("mlflow-compare.png")

            everything = [r for rs in by_role.values() for r in rs]
            one = (seeds or by_role.get("finalist") or everything)[0]
            page.goto(f"{base}/#/experiments/{eid}/runs/{one.info.run_id}")
            settle(page, text=one.info.run_name)
            save("mlflow-run.png")

            # A tested seed run's evaluation, and the study's report (if it was made).
            if seeds:
                artifact = ("evaluation", "confusion_matrix.png")
                open_artifact(page, base, eid, seeds[0], artifact)
                save("mlflow-run-artifacts.png")
            if study:
                open_artifact(page, base, eid, study[0], ("report", "params_vs_accuracy.png"))
                save("mlflow-study-report.png")
        finally:
            browser.close()
    return saved


def open_artifact(page, base: str, eid: str, run, parts: tuple[str, ...]) -> None:
    """Open a run's artifacts tab and click down `parts` (folders, then the file)."""
    page.goto(f"{base}/#/experiments/{eid}/runs/{run.info.run_id}/artifacts")
    settle(page, text=run.info.run_name)
    for part in parts:
        entry = page.get_by_text(part, exact=True)
        if not entry.count():
            return  # not there: shoot what the tab shows
        entry.first.click()
        settle(page)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    p.add_argument("--experiment", default="quick", help="experiment (= study) name")
    p.add_argument("--out", default="docs/img")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args(argv)

    try:
        chromium = shutil.which(args.chromium)
        if not chromium:
            raise Unusable(f"Chromium not found at {args.chromium} (apt-get install -y chromium)")
        args.chromium = chromium
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            raise Unusable("Python Playwright missing (.venv/bin/pip install playwright)") from None
        from mlflow.tracking import MlflowClient

        check_store(args.tracking_uri)
        client = MlflowClient(tracking_uri=args.tracking_uri)
        exp, by_role = find_runs(client, args.experiment)
    except Unusable as e:
        print(f"screenshots: {e}", file=sys.stderr)
        return 2

    if ui.VIEW_TAG not in exp.tags:  # a store written before fmnist_lab tagged it
        mlflow.set_tracking_uri(args.tracking_uri)
        ui.prepare(exp.experiment_id)
    with tempfile.TemporaryDirectory(prefix="mlflow-shots-") as workdir:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(args.tracking_uri, port, workdir)
        try:
            wait_for_server(proc, base, workdir)
            shoot(args, exp, by_role, base)
        finally:
            stop_server(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
