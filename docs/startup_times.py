"""Time `--help` of every verb and `predict` on one image, for one or more checkouts side by
side (interleaved, so machine noise hits each alike); prints the median of N runs.

    python docs/startup_times.py --checkout new=. --checkout old=/path/to/old/checkout \
        --predict-model runs:/<id>/model --predict-image photo.png --tracking-uri sqlite:///...

A checkout with `fmnist_lab/cli.py` is called as `fmnist-lab <verb>` (python -m fmnist_lab.cli),
an older one as `python -m fmnist_lab.<verb>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VERBS = ("train", "sweep", "cv", "report", "reproduce", "export", "tta", "predict", "serve",
         "server", "bench")  # fmt: skip


def command(checkout: Path, verb: str, *args: str) -> list[str]:
    if (checkout / "fmnist_lab" / "cli.py").is_file():
        return [sys.executable, "-m", "fmnist_lab.cli", verb, *args]
    return [sys.executable, "-m", f"fmnist_lab.{verb}", *args]


def seconds(cmd: list[str], checkout: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=checkout, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-500:]}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--predict-model")
    parser.add_argument("--predict-image")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--no-help", action="store_true", help="time predict only")
    args = parser.parse_args()
    checkouts = {n: Path(p).resolve() for n, p in (c.split("=", 1) for c in args.checkout)}
    jobs = {} if args.no_help else {f"{verb} --help": [verb, "--help"] for verb in VERBS}
    if args.predict_model:
        jobs["predict (one image)"] = [
            "predict", args.predict_image, "--model", args.predict_model,
            "--tracking-uri", args.tracking_uri,
        ]  # fmt: skip
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        for job, verb_args in jobs.items():
            for name, path in checkouts.items():
                times.setdefault((job, name), []).append(seconds(command(path, *verb_args), path))
    print(f"{'':<22}" + "".join(f"{name:>10}" for name in checkouts))
    for job in jobs:
        cells = "".join(f"{statistics.median(times[job, n]):>9.2f}s" for n in checkouts)
        print(f"{job:<22}{cells}")


if __name__ == "__main__":
    main()
