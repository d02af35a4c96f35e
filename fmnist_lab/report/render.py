"""The comparison table of rows, in each `--format`: table, markdown, csv, json."""

from __future__ import annotations

import json
from dataclasses import asdict

import pandas as pd

from fmnist_lab.report.runs import Row
from fmnist_lab.tables import markdown


def pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def test_text(row: Row) -> str:
    """The row's test accuracy as shown: mean +/- std over its n test runs."""
    if row.test_acc is None:
        return ""
    if row.test_acc_std is None:
        return pct(row.test_acc)
    return f"{pct(row.test_acc)} +/- {pct(row.test_acc_std)} (n={row.n_test})"


def display_frame(rows: list[Row]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": [r.run for r in rows],
            "model": [r.model for r in rows],
            "params": [f"{r.params:,}" for r in rows],
            "val_acc %": [pct(r.val_acc) for r in rows],
            "test_acc %": [test_text(r) for r in rows],
            "train_time": [
                "" if r.train_time_s is None else f"{r.train_time_s:.0f}s" for r in rows
            ],
            "pareto": ["yes" if r.pareto else "" for r in rows],
        }
    )


def render(rows: list[Row], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    if fmt == "csv":
        return pd.DataFrame([asdict(r) for r in rows]).to_csv(index=False)
    frame = display_frame(rows)
    if fmt == "markdown":
        return markdown(frame)
    return frame.to_string(index=False) if rows else "(no comparable runs)"
