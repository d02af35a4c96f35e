"""The params-vs-accuracy plot: every run's validation accuracy, its Pareto frontier, the
tested runs' test accuracy, the target line and the reference results, over log parameters;
a PNG (matplotlib) and an interactive HTML page (Plotly)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fmnist_lab.report import CONFIG  # noqa: E402
from fmnist_lab.report.render import render, test_text  # noqa: E402
from fmnist_lab.report.runs import Row, selected_frontier  # noqa: E402


def references(dataset: str) -> list[dict]:
    table = OmegaConf.to_container(OmegaConf.load(CONFIG).references)
    return table.get(dataset.removesuffix("_csv"), [])


def plot_frontier(rows: list[Row], dataset: str, target: float, title: str) -> plt.Figure:
    """Validation accuracy of every run, its Pareto frontier, test accuracy (mean +/- std)
    of the tested runs, the target line and the reference results, over log parameters."""
    fig, ax = plt.subplots(figsize=(11, 6.5), dpi=100)
    val = [r for r in rows if r.val_acc is not None]
    ax.scatter(
        [r.params for r in val],
        [100 * r.val_acc for r in val],
        s=18,
        c="0.6",
        label="validation accuracy (every run)",
        zorder=2,
    )
    front = sorted((r for r in val if r.pareto), key=lambda r: r.params)
    if front:
        ax.step(
            [r.params for r in front],
            [100 * r.val_acc for r in front],
            where="post",
            c="tab:blue",
            lw=1.5,
            label="Pareto frontier (validation)",
            zorder=3,
        )
    tested = [r for r in rows if r.test_acc is not None]
    picked = selected_frontier(rows)
    if picked:
        ax.step(
            [r.params for r in picked],
            [100 * r.test_acc for r in picked],
            where="post",
            c="tab:red",
            lw=1,
            ls="--",
            zorder=3,
            label="test accuracy of the validation-selected frontier",
        )
    if tested:
        ax.errorbar(
            [r.params for r in tested],
            [100 * r.test_acc for r in tested],
            yerr=[100 * (r.test_acc_std or 0) for r in tested],
            fmt="o",
            c="tab:red",
            capsize=3,
            label="test accuracy (mean +/- std over seeds)",
            zorder=4,
        )
    refs = references(dataset)
    placed = [x for x in refs if x["params"]]
    if placed:
        ax.scatter(
            [x["params"] for x in placed],
            [100 * x["test_acc"] for x in placed],
            marker="*",
            s=110,
            c="tab:green",
            label="reported results",
            zorder=4,
        )
        # Neighbours alternate above and below their star, so close labels stay readable.
        for i, x in enumerate(sorted(placed, key=lambda x: x["params"])):
            ax.annotate(
                x["label"],
                (x["params"], 100 * x["test_acc"]),
                fontsize=7,
                xytext=(4, 4 if i % 2 == 0 else -10),
                textcoords="offset points",
            )
    ax.axhline(100 * target, ls="--", c="k", lw=1, label=f"target {100 * target:g} %")
    ax.set_xscale("log")
    lows = [100 * r.val_acc for r in val] + [100 * r.test_acc for r in tested]
    lows += [100 * x["test_acc"] for x in placed] + [100 * target]
    bottom = math.floor(min(lows)) - 1
    ax.set_ylim(bottom, 100)
    for x in refs:  # results reported without a parameter count: a level line
        if not x["params"] and 100 * x["test_acc"] > bottom:
            ax.axhline(100 * x["test_acc"], ls=":", c="tab:green", lw=0.8)
            ax.annotate(
                x["label"],
                (1.0, 100 * x["test_acc"]),
                xycoords=("axes fraction", "data"),
                fontsize=7,
                ha="right",
                va="bottom",
                c="tab:green",
            )
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("accuracy %")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def frontier_html(rows: list[Row], dataset: str, target: float, title: str) -> go.Figure:
    """The same plot as an interactive Plotly figure: hover shows each run."""
    fig = go.Figure()
    val = [r for r in rows if r.val_acc is not None]
    hover = "%{text}<br>%{x:,} params<br>%{y:.2f} %<extra></extra>"
    fig.add_scatter(
        x=[r.params for r in val],
        y=[100 * r.val_acc for r in val],
        mode="markers",
        name="validation accuracy",
        text=[f"{r.run} ({r.role})" for r in val],
        hovertemplate=hover,
        marker={"color": "gray"},
    )
    front = sorted((r for r in val if r.pareto), key=lambda r: r.params)
    fig.add_scatter(
        x=[r.params for r in front],
        y=[100 * r.val_acc for r in front],
        mode="lines",
        line_shape="hv",
        name="Pareto frontier (validation)",
    )
    tested = [r for r in rows if r.test_acc is not None]
    fig.add_scatter(
        x=[r.params for r in tested],
        y=[100 * r.test_acc for r in tested],
        mode="markers",
        name="test accuracy (mean +/- std)",
        text=[f"{r.run}: {test_text(r)}" for r in tested],
        error_y={"array": [100 * (r.test_acc_std or 0) for r in tested]},
        hovertemplate=hover,
        marker={"color": "crimson"},
    )
    picked = selected_frontier(rows)
    fig.add_scatter(
        x=[r.params for r in picked],
        y=[100 * r.test_acc for r in picked],
        mode="lines",
        line_shape="hv",
        line_dash="dash",
        name="test accuracy of the validation-selected frontier",
    )
    refs = references(dataset)
    placed = [x for x in refs if x["params"]]
    fig.add_scatter(
        x=[x["params"] for x in placed],
        y=[100 * x["test_acc"] for x in placed],
        mode="markers+text",
        name="reported results",
        text=[x["label"] for x in placed],
        textposition="top right",
        hovertemplate=hover,
        marker={"symbol": "star", "size": 11, "color": "green"},
    )
    fig.add_hline(y=100 * target, line_dash="dash", annotation_text=f"target {100 * target:g} %")
    for x in refs:
        if not x["params"]:
            fig.add_hline(
                y=100 * x["test_acc"],
                line_dash="dot",
                line_color="green",
                annotation_text=x["label"],
                annotation_font_size=9,
            )
    fig.update_layout(
        title=title,
        xaxis_title="parameters",
        yaxis_title="accuracy %",
        xaxis_type="log",
        height=650,
    )
    return fig


def write_plots(rows: list[Row], dataset: str, target: float, title: str, out: Path) -> list[Path]:
    png, html = out / "params_vs_accuracy.png", out / "params_vs_accuracy.html"
    fig = plot_frontier(rows, dataset, target, title)
    fig.savefig(png)
    plt.close(fig)
    frontier_html(rows, dataset, target, title).write_html(html, include_plotlyjs=True)
    table = out / "comparison.csv"
    table.write_text(render(rows, "csv"))
    return [png, html, table]
