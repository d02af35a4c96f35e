"""`python -m fmnist_lab.reproduce`: the reference recipes, several seeds each, next to the
figures their sources reported.

Each `conf/experiment/*.yaml` with a `reference:` block is one row (the references, and the
frontier winners that `python -m fmnist_lab.export` writes). Every (recipe, seed) is
one ordinary training run, tagged `reproduce=<recipe>`, in the MLflow experiment
`references`; running the command again trains only the seeds not yet recorded, then prints
the table from what MLflow holds:

    python -m fmnist_lab.reproduce r1_mlp r2_mlp --seeds 3
    python -m fmnist_lab.reproduce --table-only --format markdown   # the table, no training
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist_lab.errors import UserError, exit_cleanly, hydra_message

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from omegaconf import DictConfig

CONF = Path(__file__).resolve().parent.parent / "conf"
EXPERIMENT = "references"


def recipes() -> dict[str, DictConfig]:
    """Every reference recipe: experiment name -> its composed config (with `reference:`)."""
    found = {}
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = compose_recipe(path.stem, [])
        if "reference" in cfg:
            found[path.stem] = cfg
    return found


def compose_recipe(name: str, overrides: Sequence[str]) -> DictConfig:
    """conf/train.yaml with `experiment=<name>` and the overrides; a bad one: one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        try:
            return compose("train", overrides=[f"experiment={name}", *overrides])
        except HydraException as err:
            raise UserError(f"cannot compose experiment={name}: {hydra_message(err)}") from None


@dataclass
class Row:
    recipe: str
    label: str
    model: str
    params: int
    reported_params: int | None
    reported_acc: float | None
    reported_val: float | None  # a source that gave only a validation figure
    overrides: str
    runs: int = 0
    accs: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.accs) if self.accs else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.accs) if len(self.accs) > 1 else None


RESERVED = {"seed": "--seeds", "data": "--data", "tracking": "--tracking-uri"}


def check_overrides(overrides: Sequence[str]) -> None:
    """`--set` takes Hydra overrides, but not of what the command itself controls."""
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if "=" not in item:
            raise UserError(f"--set takes KEY=VALUE overrides; '{item}' is not one "
                            "(recipe names go before --set)")  # fmt: skip
        root = key.split(".", 1)[0]
        if key in RESERVED or root == "tracking":  # data.* keys are fine, the dataset is not
            raise UserError(f"--set {item}: this command sets {key} itself; use "
                            f"{RESERVED[root]} instead")  # fmt: skip


def run_config(recipe: str, seed: int, data: str | None, overrides: Sequence[str],
               uri: str | None) -> DictConfig:  # fmt: skip
    """The training config of one seed of `recipe`, as `python -m fmnist_lab.train` gets it."""
    return compose_recipe(recipe, [
        *([f"data={data}"] if data else []), f"seed={seed}",
        *([f"tracking.uri={uri}"] if uri else []), f"tracking.experiment={EXPERIMENT}",
        "runtime.progress_bar=false", *overrides,
    ])  # fmt: skip


def checked_recipes(names: Sequence[str], seeds: int, data: str | None,
                    overrides: Sequence[str]) -> dict[str, DictConfig]:  # fmt: skip
    """Every recipe, once `names` (none: all of them), `seeds` and the overrides are known
    to be good: a bad one stops before anything is trained or scored."""
    known = recipes()
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(f"no reference recipe {', '.join(unknown)}; known: {', '.join(known)}")
    if seeds < 1:
        raise UserError(f"--seeds {seeds} must be at least 1")
    check_overrides(overrides)
    for name in names or known:
        check_recipe(name, data, overrides)
    return known


def check_recipe(recipe: str, data: str | None, overrides: Sequence[str]) -> None:
    """Everything that can be wrong with a recipe's config before any run is recorded."""
    from fmnist_lab import settings
    from fmnist_lab.models import build_model

    cfg = run_config(recipe, 0, data, overrides, None)
    try:
        settings.check(cfg)
        build_model(cfg.model)
    except UserError as err:
        raise UserError(f"experiment={recipe}: {err}") from None


def signature(overrides: Sequence[str]) -> str:
    """How a set of overrides is recorded and found again (order does not matter)."""
    return " ".join(sorted(overrides))


def differences(run: Run, settings: dict[str, str]) -> list[str]:
    """The recipe `settings` (`tracking.recipe_settings`) that `run` logged another value of,
    as "key=logged (now value)"; a setting the run did not log (older code) is not compared."""
    from fmnist_lab import tracking

    logged = tracking.current_names(run.data.params)
    return [f"{key}={logged[key]} (now {value})" for key, value in settings.items()
            if key in logged and logged[key] != value]  # fmt: skip


@dataclass
class Recorded:
    """The runs of a recipe that count: per seed, the latest finished run trained with the
    settings the recipe (with the overrides) has now; and per seed with no such run, how its
    latest run differs (the recipe file changed since, or other overrides)."""

    runs: dict[int, Run] = field(default_factory=dict)
    stale: dict[int, tuple[Run, list[str]]] = field(default_factory=dict)


def recorded(client: MlflowClient, recipe: str, cfg: DictConfig, seeds: int) -> Recorded:
    """The finished runs of seeds 0..seeds-1 of `recipe` on `cfg`'s dataset, sorted by
    whether they were trained with `cfg`'s settings (the seed aside)."""
    from fmnist_lab import tracking

    found = Recorded()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return found
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.reproduce = '{recipe}' and tags.dataset = '{cfg.data.name}' "
        "and attributes.status = 'FINISHED'",
        max_results=1000,
        order_by=["attributes.start_time ASC"],
    )
    settings = tracking.recipe_settings(cfg)
    for run in runs:  # a later run of a seed replaces an earlier one
        seed = int(run.data.params.get("seed", -1))
        if not 0 <= seed < seeds:
            continue
        differ = differences(run, settings)
        if differ:
            found.stale[seed] = (run, differ)
        else:
            found.runs[seed] = run
    for seed in found.runs:
        found.stale.pop(seed, None)
    return found


def reproduce(recipe: str, seeds: int, data: str | None, overrides: Sequence[str],
              uri: str | None, only: Sequence[int] = ()) -> None:  # fmt: skip
    """Train the seeds 0..seeds-1 of `recipe` (or just those in `only`) not recorded yet
    with the recipe's settings as they are now."""
    from mlflow import MlflowClient

    from fmnist_lab.train import resumable, train  # torch and Lightning only when training

    found = recorded(MlflowClient(), recipe, run_config(recipe, 0, data, overrides, uri), seeds)
    for seed in only or range(seeds):
        if seed in found.runs:
            print(f"{recipe} seed {seed}: already recorded")
            continue
        if seed in found.stale:
            run, differ = found.stale[seed]
            print(f"{recipe} seed {seed}: run {run.info.run_id} was trained with other "
                  f"settings ({', '.join(differ[:3])}{', ...' if len(differ) > 3 else ''}); "
                  "training it again", flush=True)  # fmt: skip
        cfg = run_config(recipe, seed, data, overrides, uri)
        tags = {"reproduce": recipe, "reproduce.overrides": signature(overrides)}
        result = resumable(train)(cfg, tags=tags)  # a killed seed goes on from its last epoch
        acc = result.metrics.get("test_acc")
        shown = f"test accuracy {acc:.4f}" if acc is not None else "no test (test=false)"
        print(f"{recipe} seed {seed}: {shown}, {result.metrics['train_time_s']:.0f} s "
              f"(run {result.run_id})", flush=True)  # fmt: skip


def table_rows(known: dict[str, DictConfig], names: Sequence[str], seeds: int,
               data: str | None, overrides: Sequence[str]) -> list[Row]:  # fmt: skip
    """One row per recipe of `known` (or of `names`) from the runs MLflow holds (with no
    runs: the row, empty). The reported figures stand beside a recipe only on the data its
    source used."""
    from mlflow import MlflowClient

    from fmnist_lab.models import build_model, count_params

    client, rows = MlflowClient(), []
    for name, recipe in known.items():
        if names and name not in names:
            continue
        ref = recipe.reference
        cfg = run_config(name, 0, data, overrides, None)
        own_data = cfg.data.name == recipe.data.name
        row = Row(
            recipe=name,
            label=ref.label,
            model=cfg.model.name,
            params=count_params(build_model(cfg.model)),
            reported_params=ref.get("params"),
            reported_acc=ref.get("test_acc") if own_data else None,
            reported_val=ref.get("val_acc") if own_data else None,
            overrides=signature(overrides),
        )
        for run in recorded(client, name, cfg, seeds).runs.values():
            row.runs += 1
            if "test_acc" in run.data.metrics:
                row.accs.append(run.data.metrics["test_acc"])
                row.seconds.append(run.data.metrics.get("train_time_s", float("nan")))
        rows.append(row)
    return rows


def render(rows: Sequence[Row], fmt: str) -> str:
    """The table as aligned text or Markdown, with the footnote for the marked rows."""
    import pandas as pd

    from fmnist_lab.tables import markdown

    records = []
    for r in rows:
        ours = f"{r.runs} runs, no test_acc" if r.runs else "not run"
        if r.accs:
            ours = f"{r.mean:.2%}" + (f" +/- {r.std:.2%}" if r.std is not None else "")
            ours += f" (n={len(r.accs)})"
        diff = ""
        if r.mean is not None and r.reported_acc is not None:
            points = (r.mean - r.reported_acc) * 100
            diff = f"{points:+.2f} pts" + (" *" if abs(points) > 0.5 else "")
        records.append({
            "ref": r.label,
            "recipe": r.recipe + (f" ({r.overrides})" if r.overrides else ""),
            "params": f"{r.params:,}",
            "reported params": f"{r.reported_params:,}" if r.reported_params else "-",
            "test acc (ours)": ours,
            "reported": _reported(r),
            "ours - reported": diff,
            "train time / seed": f"{statistics.fmean(r.seconds):.0f} s" if r.seconds else "",
        })  # fmt: skip
    frame = pd.DataFrame(records)
    if fmt == "markdown":
        table = markdown(frame, left=("ref", "recipe"))
    else:
        table = frame.to_string(index=False, justify="left")
    return table + "\n(* more than half a point from the reported figure)"


def _reported(row: Row) -> str:
    if row.reported_acc is not None:
        return f"{row.reported_acc:.2%}"
    return f"{row.reported_val:.2%} (val)" if row.reported_val is not None else "-"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-lab reproduce", description=__doc__.splitlines()[0]
    )
    parser.add_argument("recipes", nargs="*", help="experiment names (default: every reference)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per recipe (3)")
    parser.add_argument("--data", default=None, choices=["fashion_mnist", "mnist"],
                        help="the dataset (default: each recipe's own)")  # fmt: skip
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every run (marked in the table)")  # fmt: skip
    parser.add_argument("--tracking-uri", default=None,
                        help="else $MLFLOW_TRACKING_URI, else ./mlflow.db")  # fmt: skip
    parser.add_argument("--only-seeds", type=int, nargs="+", default=[], metavar="S",
                        help="train just these seeds (one process per core or GPU)")  # fmt: skip
    parser.add_argument("--table-only", action="store_true", help="train nothing")
    parser.add_argument("--format", default="table", choices=["table", "markdown"])
    return parser.parse_args(argv)


@exit_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # imported once parsed: --help answers without loading torch or MLflow
    import mlflow

    from fmnist_lab import tracking

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    known = checked_recipes(args.recipes, args.seeds, args.data, args.set)
    outside = [s for s in args.only_seeds if not 0 <= s < args.seeds]
    if outside:
        raise UserError(f"--only-seeds {' '.join(map(str, outside))}: not among the seeds "
                        f"0..{args.seeds - 1} of --seeds {args.seeds}")  # fmt: skip
    tracking.configure(args.tracking_uri, EXPERIMENT)
    if not args.table_only:
        for name in args.recipes or known:
            reproduce(name, args.seeds, args.data, args.set, args.tracking_uri,
                      sorted(set(args.only_seeds)))  # fmt: skip
    rows = table_rows(known, args.recipes, args.seeds, args.data, args.set)
    print(render(rows, args.format))
    print(f"MLflow: {mlflow.get_tracking_uri()} (experiment '{EXPERIMENT}')")


if __name__ == "__main__":
    main()
