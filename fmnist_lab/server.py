"""`python -m fmnist_lab.server`: an MLflow tracking server that many workers can log to.

A real `mlflow server` on 127.0.0.1 (`--host 0.0.0.0` to publish it), with a SQLite backend
unless `--backend-store-uri postgresql://...`, and artifacts proxied through the server
(`--serve-artifacts` into `--artifacts-destination`), so clients need only its URL:
`tracking.uri=http://<host>:<port>`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from fmnist_lab.errors import UserError, exit_cleanly


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m fmnist_lab.server",
        description="Start an MLflow tracking server with proxied artifact storage.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow.db",
                        help="where runs are kept: sqlite:///... or postgresql://...")  # fmt: skip
    parser.add_argument("--artifacts-destination", default="mlartifacts",
                        help="where the server keeps artifacts: a folder or s3://...")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    return parser.parse_args(argv)


def command(args: argparse.Namespace) -> list[str]:
    """The `mlflow server` command line for `args`."""
    destination = args.artifacts_destination
    if "://" not in destination:  # a local folder: absolute, so the server's cwd never matters
        destination = str(Path(destination).expanduser().resolve())
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", args.host, "--port", str(args.port),
        "--backend-store-uri", args.backend_store_uri,
        "--serve-artifacts", "--artifacts-destination", destination,
        "--workers", str(args.workers),
    ]  # fmt: skip


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as err:
            raise UserError(
                f"cannot serve on {host}:{port} ({err.strerror}); pick another --port"
            ) from None


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a port number (1..65535)")
    check_port_free(args.host, args.port)
    cmd = command(args)
    print(f"MLflow tracking server: http://{args.host}:{args.port}  (runs: "
          f"{args.backend_store_uri}, artifacts: {cmd[cmd.index('--artifacts-destination') + 1]})",
          flush=True)  # fmt: skip
    # The server replaces this process: Ctrl-C and SIGTERM reach it directly.
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
