"""docker-compose.yml, Dockerfile and .env.example, checked without a Docker engine: the file
as Compose reads it (`docker compose config` / `docker-compose config` where a client is
installed: .ci/run installs one), and, always, its services against the project's own CLIs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

import pytest
import yaml
from hydra import compose, initialize_config_dir

from fmnist_lab import datasets, server

from .conftest import CONF, REPO

VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error};
    $$ is a literal $."""

    def value(match: re.Match) -> str:
        name, op, arg = match.groups()
        got = env.get(name)
        if op in (":-", "-"):
            return got if got or (op == "-" and got is not None) else arg
        if op in (":?", "?") and not got:
            raise ValueError(f"{name}: {arg}")
        return got or ""

    return VARIABLE.sub(value, text.replace("$$", "\0")).replace("\0", "$")


@pytest.fixture(scope="module")
def stack() -> dict:
    """docker-compose.yml with .env.example's values, as Compose would resolve it."""
    text = interpolate((REPO / "docker-compose.yml").read_text(), env_example())
    return yaml.safe_load(text)


def command(service: dict) -> list[str]:
    cmd = service["command"]
    return shlex.split(cmd) if isinstance(cmd, str) else cmd


def test_every_variable_is_documented_in_env_example():
    text = (REPO / "docker-compose.yml").read_text()
    used = {m.group(1) for m in VARIABLE.finditer(text.replace("$$", ""))}
    documented = set(env_example()) | {
        line.lstrip("# ").partition("=")[0]
        for line in (REPO / ".env.example").read_text().splitlines()
        if re.match(r"#\s*[A-Z_]+=", line)  # optional settings, shown commented out
    }
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):  # no password, no stack
        interpolate(text, {})


def test_services_volumes_healthchecks_and_ports(stack):
    services = stack["services"]
    assert {"postgres", "mlflow", "optuna-dashboard", "worker", "worker-gpu"} <= set(services)
    named = set(stack["volumes"])
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:")
    assert "postgres-data:/var/lib/postgresql/data" in pg["volumes"] and "postgres-data" in named
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    init = next(v for v in pg["volumes"] if "docker-entrypoint-initdb.d" in v)
    sql = (REPO / init.split(":")[0]).read_text()
    assert "CREATE DATABASE mlflow;" in sql and "CREATE DATABASE mlflow_auth;" in sql
    assert "5000/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert "8080/api/studies" in " ".join(services["optuna-dashboard"]["healthcheck"]["test"])
    # Published ports listen on 127.0.0.1 only, unless BIND_ADDRESS says otherwise.
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert len(published) == 3 and all(p.startswith("127.0.0.1:") for p in published)
    raw = (REPO / "docker-compose.yml").read_text()
    assert raw.count('"${BIND_ADDRESS:-127.0.0.1}:') == 3
    # Every service that waits for another waits until it is healthy.
    for s in services.values():
        for dep in s.get("depends_on", {}).values():
            assert dep["condition"] == "service_healthy"


def test_mlflow_service_runs_our_server_on_postgresql_with_proxied_artifacts(stack):
    service = stack["services"]["mlflow"]
    cmd = command(service)
    assert cmd[:3] == ["python", "-m", "fmnist_lab.server"]
    args = server.parse_args(cmd[3:])
    assert args.host == "0.0.0.0" and args.port == 5000
    assert args.backend_store_uri.startswith("postgresql://fmnist:change-me-postgres@postgres:")
    assert args.backend_store_uri.endswith("/mlflow")
    assert args.auth_db_uri.endswith("/mlflow_auth")
    volume, _, mount = service["volumes"][0].partition(":")
    assert mount == args.artifacts_destination and volume in stack["volumes"]
    assert service["ports"] == ["127.0.0.1:5000:5000"]
    # Basic auth is one setting: the variable the server reads, off by default.
    assert str(service["environment"][server.AUTH_ENV]).lower() == "false"
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert key in service["environment"]


def test_workers_run_the_sweep_cli_against_the_shared_storage_and_server(stack):
    services = stack["services"]
    dashboard = command(services["optuna-dashboard"])
    for name in ("worker", "worker-gpu"):
        cmd = command(services[name])
        assert cmd[:3] == ["python", "-m", "fmnist_lab.sweep"]
        # The overrides compose against conf/sweep.yaml exactly as the CLI would.
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("sweep", overrides=cmd[3:])
        assert cfg.storage == dashboard[-1]  # the dashboard shows the workers' study
        assert cfg.storage.startswith("postgresql://") and cfg.storage.endswith(
            "@postgres:5432/optuna"
        )
        assert cfg.tracking.uri == "http://mlflow:5000"
        assert cfg.study_name == "quick" and cfg.sweep.name == "quick"
        env = services[name]["environment"]
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert env["FMNIST_LAB_CACHE"] in mounts and cfg.output_dir.startswith("/outputs/")
        assert datasets.DATA_ENV in env and "/data" in mounts
        assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
        assert services[name]["depends_on"].keys() == {"postgres", "mlflow"}
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "profiles" not in services["worker"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "trainer.accelerator=gpu" in command(gpu)


def test_dockerfile_runs_the_readme_set_up():
    dockerfile = (REPO / "Dockerfile").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make venv" in readme and re.search(r"^RUN make venv", dockerfile, re.M)
    copied = {src.rstrip("/") for line in dockerfile.splitlines() if line.startswith("COPY")
              for src in line.split()[1:-1]}  # fmt: skip
    # What `make venv` installs from, and the configs the CLIs compose.
    assert {"Makefile", "pyproject.toml", "README.md", "fmnist_lab", "conf", "sweeps"} <= copied
    assert (REPO / "conf" / "sweep").resolve() == (REPO / "sweeps").resolve()
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".env" in ignored  # no local venv or secrets in the image


def compose_client() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.slow  # a real Compose client
def test_compose_client_accepts_the_file(tmp_path, stack):
    client = compose_client()
    if client is None:
        if os.environ.get("FMNIST_LAB_REQUIRE_COMPOSE"):
            pytest.fail("a Compose client is required here (docker compose or docker-compose)")
        pytest.skip("no Compose client installed (the file is still checked by the tests above)")
    result = subprocess.run(
        [*client, "--env-file", str(REPO / ".env.example"), "--profile", "gpu", "config"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(stack["services"])
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port["host_ip"] if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", name
    # Without .env the password is missing: Compose refuses, naming it.
    (tmp_path / "docker-compose.yml").write_text((REPO / "docker-compose.yml").read_text())
    bare = subprocess.run([*client, "config"], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if not k.startswith("POSTGRES")},
                          timeout=120)  # fmt: skip
    assert bare.returncode != 0 and "POSTGRES_PASSWORD" in bare.stderr
