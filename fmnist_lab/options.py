"""Command-line options that several verbs share, each named after the config key it stands
for, so the same flag means the same thing in every verb. Light: argparse only."""

from __future__ import annotations

import argparse

DATASETS = ("fashion_mnist", "mnist")  # the IDX datasets (conf/data/<name>.yaml)


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    """`--tracking-uri`: `tracking.uri`."""
    parser.add_argument(
        "--tracking-uri", default=None,
        help="the MLflow tracking store or server (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db)",
    )  # fmt: skip


def add_data(parser: argparse.ArgumentParser, help: str, default: str | None = None,
             choices: tuple[str, ...] | None = DATASETS) -> None:  # fmt: skip
    """`--data`: the `data` config group (`--dataset`, its older spelling, still works)."""
    parser.add_argument("--data", "--dataset", dest="data", default=default, help=help,
                        choices=None if choices is None else list(choices))  # fmt: skip


def add_storage(parser: argparse.ArgumentParser, help: str) -> None:
    """`--storage`: the sweep's `storage`, an Optuna storage URL."""
    parser.add_argument("--storage", default=None, metavar="URL", help=help)
