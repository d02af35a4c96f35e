"""Command-line options that several verbs share, each named after the config key it stands
for, so the same flag means the same thing in every verb; and the checks they need. Light:
no torch, no MLflow."""

from __future__ import annotations

import argparse
import socket

from fmnist_lab.errors import UserError

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


def port(text: str) -> int:
    """An argparse type: a TCP port number."""
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1..65535)")
    return int(text)


def add_port(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument("--port", type=port, default=default, help=f"default {default}")


def check_port_free(host: str, port: int) -> None:
    """A one-line error, before anything starts, when `host:port` cannot be served on."""
    with socket.socket() as s:
        # As the server binds: a port whose old connections linger in TIME_WAIT (a server
        # just restarted) is free; one with a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            raise UserError(
                f"cannot serve on {host}:{port} ({err.strerror}); pick another --port"
            ) from None
