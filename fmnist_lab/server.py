"""`python -m fmnist_lab.server`: an MLflow tracking server that many workers can log to.

A real `mlflow server` on 127.0.0.1 (`--host 0.0.0.0` to publish it), with a SQLite backend
unless `--backend-store-uri postgresql://...`, and artifacts proxied through the server
(`--serve-artifacts` into `--artifacts-destination`), so clients need only its URL:
`tracking.uri=http://<host>:<port>`. `--basic-auth` turns on MLflow's built-in basic
authentication (or $FMNIST_LAB_BASIC_AUTH=true): the admin password comes from
$MLFLOW_AUTH_ADMIN_PASSWORD, clients send $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.options import add_port, check_port_free

AUTH_ENV = "FMNIST_LAB_BASIC_AUTH"  # the one setting that turns basic auth on (docker-compose)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-lab server",
        description="Start an MLflow tracking server with proxied artifact storage.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    add_port(parser, 5000)
    parser.add_argument("--backend-store-uri", default="sqlite:///mlflow.db",
                        help="where runs are kept: sqlite:///... or postgresql://...")  # fmt: skip
    parser.add_argument("--artifacts-destination", default="mlartifacts",
                        help="where the server keeps artifacts: a folder or s3://...")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--basic-auth",
        action="store_true",
        default=os.environ.get(AUTH_ENV, "").lower() in ("1", "true", "yes", "on"),
        help=f"require a user name and password (MLflow's basic-auth app); also ${AUTH_ENV}=true",
    )
    parser.add_argument("--admin-user", default="admin", help="with --basic-auth")
    parser.add_argument(
        "--auth-db-uri",
        default="sqlite:///mlflow_auth.db",
        help="with --basic-auth: where users and permissions are kept",
    )
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
        *(["--app-name", "basic-auth"] if args.basic_auth else []),
    ]  # fmt: skip


def auth_config(args: argparse.Namespace) -> Path:
    """Write the basic-auth app's config (users in `--auth-db-uri`, others may read); return
    its path. MLflow creates the admin at first start from $MLFLOW_AUTH_ADMIN_PASSWORD."""
    if not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise UserError("--basic-auth needs the admin's password in MLFLOW_AUTH_ADMIN_PASSWORD")
    db = args.auth_db_uri
    if db.startswith("sqlite:///"):  # absolute, as the backend's own path would be read
        db = f"sqlite:///{Path(db.removeprefix('sqlite:///')).expanduser().resolve()}"
    path = Path("mlflow_auth.ini").resolve()
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {db}\n"
        f"admin_username = {args.admin_user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_port_free(args.host, args.port)
    if args.basic_auth:
        os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(args))
        # The auth app's CSRF protection needs a key; one server can make its own, several
        # behind one address must share one (set MLFLOW_FLASK_SERVER_SECRET_KEY).
        os.environ.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    cmd = command(args)
    print(f"MLflow tracking server: http://{args.host}:{args.port}  (runs: "
          f"{args.backend_store_uri}, artifacts: {cmd[cmd.index('--artifacts-destination') + 1]})",
          flush=True)  # fmt: skip
    # The server replaces this process: Ctrl-C and SIGTERM reach it directly.
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
