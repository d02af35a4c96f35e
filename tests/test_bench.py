"""`python -m fmnist_lab.bench` runs and prints its figures (their values are the benchmark's
business, not the tests'; docs/benchmarks.md has them)."""

from __future__ import annotations

import re

import pytest

from .conftest import run_cli


@pytest.mark.slow
def test_bench_prints_throughput_ratios_and_time_to_accuracy(tmp_path, data_root, cache_dir):
    env = {"FMNIST_LAB_DATA": str(data_root), "FMNIST_LAB_CACHE": str(cache_dir)}
    result = run_cli(
        "fmnist_lab.bench", "--model", "convnet_20k", "--images", "2000", "--skip-dataloader",
        "--repeat", "2",
        "--time-to-acc", "0.6", "--train-args", "model=convnet_20k", "data.train_fraction=0.2",
        "--max-epochs", "2", cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    row = re.search(r"^convnet_20k\s+20,538\s+([\d,]+)\s+([\d,]+)\s+-\s+([\d.]+)x\s+-\s+(-?[\d.]+)",
                    out, re.M)  # fmt: skip
    assert row, out
    assert "best of 2" in out and "malloc keep" in out  # as training allocates
    light, plain = (float(row.group(i).replace(",", "")) for i in (1, 2))
    # The ratio comes from the unrounded rates: within half a unit of its last digit (plus the
    # rates' own rounding to whole images/s) of the ratio of the printed rates.
    assert abs(float(row.group(3)) - light / plain) <= 0.005 + 1 / plain
    # From scratch to 60 %: one epoch of a 20 k model on 11,000 images gets there.
    assert re.search(r"epoch +1: +[\d.]+ s of training, test accuracy 0\.\d{4}", out)
    assert re.search(r"reached after [\d.]+ s of training", out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time-to-acc", "94"], "--time-to-acc 94.0 must be a fraction in (0, 1]"),
        (["--repeat", "0"], "--repeat 0 must be at least 1"),
    ],
)
def test_bench_refuses_bad_settings_in_one_line(tmp_path, args, message):
    result = run_cli("fmnist_lab.bench", "--model", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
