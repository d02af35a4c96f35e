"""`python -m fmnist_lab.report`: the command line. Light: argparse only until it is parsed,
so `--help` answers at once; the report's modules (MLflow, Optuna, pandas, plotting) load
after."""

from __future__ import annotations

import argparse
from pathlib import Path

from fmnist_lab.errors import exit_cleanly
from fmnist_lab.options import add_data, add_storage, add_tracking_uri

FORMATS = ("table", "markdown", "csv", "json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-lab report",
        description="Compare runs by parameter count against accuracy.",
    )
    pick = parser.add_argument_group("what to compare (one of)")
    pick.add_argument("--study", help="a sweep's study name: its trials and finalists")
    pick.add_argument("--experiment", nargs="+", default=[], help="every run of experiments")
    pick.add_argument("--runs", nargs="+", default=[], metavar="RUN_ID", help="these runs")
    pick.add_argument("--list", action="store_true", help="list the studies in the store")
    add_tracking_uri(parser)
    parser.add_argument("--format", choices=FORMATS, default="table")
    parser.add_argument(
        "--output", type=Path, help="folder for the plots (default: outputs/reports/<name>)"
    )
    add_storage(parser, help="the study's Optuna storage, if not the one recorded")
    add_data(parser, help="only runs on this dataset (fashion_mnist, mnist)", choices=None)
    parser.add_argument("--target", type=float, help="the accuracy line (default 0.94)")
    parser.add_argument("--no-log", action="store_true", help="do not log to the parent run")
    parser.add_argument(
        "--compare-datasets",
        action="store_true",
        help="line up the same configs on Fashion-MNIST and MNIST",
    )
    args = parser.parse_args(argv)
    if args.target is not None and not 0 < args.target < 1:
        parser.error(f"--target {args.target} must be an accuracy between 0 and 1, e.g. 0.94")
    if sum(map(bool, (args.study, args.experiment, args.runs, args.list))) != 1:
        parser.error("name exactly one of --study, --experiment, --runs, --list")
    return args


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from fmnist_lab.report.command import report

    report(args)


if __name__ == "__main__":
    main()
