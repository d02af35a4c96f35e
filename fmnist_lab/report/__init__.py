"""`python -m fmnist_lab.report`: compare runs by parameter count against accuracy.

Reads any MLflow tracking store: a study (its trials and finalists), whole experiments, or
explicit run ids. Prints the comparison table, writes the params-vs-accuracy plot (PNG and an
interactive HTML page) with the Pareto frontier, the target line and the reference results,
and for a study the Optuna parameter importances and optimisation history, all logged to the
study's parent run. `--compare-datasets` lines up the same configs on Fashion-MNIST and MNIST.

One module per concern: `runs` (finding runs, turning them into rows, the Pareto flags) ->
`render` (the table in each format) -> `frontier` (the params-vs-accuracy plots) -> `study`
(Optuna's analyses of a study); `datasets` is `--compare-datasets`; `command` ties them
together and `__main__` is the command line (light: it imports them only after parsing).
"""

from __future__ import annotations

from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "report.yaml"
