"""The frontier of docs/results.md: what the search found, the hand-made designs and the public
figures, in one table and on one plot per dataset.

The measured rows are docs/studies/frontier.yaml (each copied from a `reproduce` table or a
study record when its runs ended; their MLflow stores do not all outlive the sessions that
ran them); the public figures are conf/report.yaml's, those with a parameter count.

    python docs/frontier.py                 # the tables (Markdown) and docs/img/frontier_*.png
    python docs/frontier.py --update        # also into docs/results.md, between its markers
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from fmnist_lab.measures import mean_and_std  # noqa: E402

HERE = Path(__file__).resolve().parent
ROWS = HERE / "studies" / "frontier.yaml"
PUBLIC = HERE.parent / "conf" / "report.yaml"
RESULTS = HERE / "results.md"
TEST_IMAGES = 10_000
STYLE = {  # source -> marker, colour, legend, the table's word
    "search": ("o", "tab:blue", "found by the search from scratch (multi-fidelity)", "search"),
    "search_fixed": (
        "v",
        "tab:cyan",
        "found by the earlier fixed-length search",
        "search, fixed-length",
    ),
    "hand": ("s", "tab:orange", "hand-made design, confirmed on validation", "hand-made"),
    "public": ("x", "0.35", "public figure (its own protocol)", "public"),
}


def measured(rows: list[dict]) -> list[dict]:
    """The rows with a test figure, each with `mean` and `std` (from its seeds where listed)."""
    out = []
    for r in rows:
        if r.get("test_accs"):
            mean, std = mean_and_std(r["test_accs"], TEST_IMAGES)
        elif r.get("test_mean") is not None:
            mean, std = r["test_mean"], r.get("test_std", 0.0)
        else:
            continue  # still training
        out.append({**r, "mean": mean, "std": std})
    return out


def public(dataset: str) -> list[dict]:
    refs = OmegaConf.to_container(OmegaConf.load(PUBLIC).references).get(dataset, [])
    return [{"name": r["label"], "source": "public", "params": r["params"],
             "mean": r["test_acc"], "std": None} for r in refs if r["params"]]  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| source | model | params | epochs | test accuracy | wall time | hardware, date | "
             "command |", "| --- | --- | ---: | ---: | ---: | --- | --- | --- |"]  # fmt: skip
    for r in sorted(rows, key=lambda r: r["params"]):
        acc = f"{100 * r['mean']:.2f} %"
        if r["std"] is not None:
            acc += f" +/- {100 * r['std']:.2f}"
        when = f"{r['hardware']}, {r['date']}" if r.get("hardware") else "-"
        command = f"`{r['command']}`" if r.get("command") else "-"
        lines.append(f"| {STYLE[r['source']][3]} | {r['name']} | "
                     f"{r['params']:,} | {r.get('epochs') or '-'} | {acc} | "
                     f"{r.get('time') or '-'} | {when} | {command} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict], dataset: str, out: Path) -> None:
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
    for source, (marker, colour, label, _) in STYLE.items():
        mine = [r for r in rows if r["source"] == source]
        if not mine:
            continue
        ax.errorbar([r["params"] for r in mine], [100 * r["mean"] for r in mine],
                    yerr=[100 * (r["std"] or 0) for r in mine], fmt=marker, c=colour,
                    ms=8, capsize=3, label=label, zorder=3)  # fmt: skip
        for r in mine:
            ax.annotate(r["name"], (r["params"], 100 * r["mean"]), fontsize=7,
                        xytext=(5, 4), textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy, % (3 seeds: mean +/- std)")
    ax.set_title(f"{dataset}: the frontier found by the search, the hand-made designs and "
                 "the public figures", fontsize=10)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "img")
    parser.add_argument("--update", action="store_true", help=f"write the tables into {RESULTS}")
    args = parser.parse_args()
    everything = OmegaConf.to_container(OmegaConf.load(ROWS))
    page = RESULTS.read_text()
    for dataset, rows in everything.items():
        drawn = measured(rows) + public(dataset)
        path = args.out / f"frontier_{dataset}.png"
        plot(drawn, dataset, path)
        print(f"## {dataset} ({path.name})\n\n{table(drawn)}\n")
        start, end = f"<!-- frontier:{dataset} -->\n", f"<!-- /frontier:{dataset} -->"
        if args.update and start in page:
            before, rest = page.split(start, 1)
            page = before + start + table(drawn) + "\n" + end + rest.split(end, 1)[1]
    if args.update:
        RESULTS.write_text(page)


if __name__ == "__main__":
    main()
