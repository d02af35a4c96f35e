"""The `fmnist-lab` command line: every verb reachable, --help without the heavy stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fmnist_lab import cli

HEAVY = ("torch", "pytorch_lightning", "mlflow", "optuna", "pandas", "matplotlib", "plotly")
PROBE = """
import sys
from fmnist_lab import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
else:
    code = 0
print("loaded:", sorted(m for m in {heavy} if m in sys.modules), "exit:", code)
"""


def fmnist_lab(*args: str) -> subprocess.CompletedProcess:
    code = PROBE.format(heavy=HEAVY)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_help_lists_every_verb_and_loads_nothing_heavy():
    result = fmnist_lab("--help")
    for verb in cli.VERBS:
        assert f"\n  {verb} " in result.stdout
    assert "loaded: [] exit: 0" in result.stdout


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_every_verb_answers_help_without_torch_mlflow_or_lightning(verb):
    result = fmnist_lab(verb, "--help")
    assert f"usage: fmnist-lab {verb}" in result.stdout, result.stderr[-2000:]
    assert "loaded: [] exit: 0" in result.stdout, result.stdout[-500:]


def test_an_unknown_verb_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "fmnist_lab.cli", "trian"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"fmnist-lab: 'trian' is not a verb; one of {', '.join(cli.VERBS)}"
    ]


def test_a_hydra_verb_runs_through_the_console_script(tmp_path):
    """`fmnist-lab train --cfg job` composes exactly what `python -m fmnist_lab.train` does."""
    args = ["--cfg", "job", "model=convnet_20k", "trainer.max_epochs=2"]
    ours = subprocess.run([sys.executable, "-m", "fmnist_lab.cli", "train", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    direct = subprocess.run([sys.executable, "-m", "fmnist_lab.train", *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ours.returncode == direct.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout == direct.stdout and "max_epochs: 2" in ours.stdout
    assert not list(tmp_path.iterdir())  # --cfg job writes nothing
