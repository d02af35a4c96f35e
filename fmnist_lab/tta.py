"""`python -m fmnist_lab.tta RUN_ID...`: test logged runs again with test-time augmentation.

`python -m fmnist_lab.tta --recipe NAME --seeds 3` scores the seeds `python -m
fmnist_lab.reproduce NAME --seeds 3` recorded (with the same `--set`/`--data`, if any).

Each image is classified by the mean of the model's class probabilities over a few views of
it: itself and its mirror image (`flip`), itself and its four one-pixel shifts (`shift`), or
all ten (`flip_shift`). The run's validation and test splits are rebuilt from the config it
logged and the model runs at the run's precision, so the plain view (`none`) reproduces the
accuracies the run logged. Views cost inference time, never parameters; like everything
here they are to be chosen on validation accuracy, and test accuracy only reports the choice.
Each run gets `val_acc_tta_<views>` and `test_acc_tta_<views>` metrics.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.options import add_data, add_tracking_uri

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient

    from fmnist_lab.data import Splits


def shifts(x: torch.Tensor) -> list[torch.Tensor]:
    """`x` and its four one-pixel shifts, zero-filled, as pad-and-crop training makes them."""
    import torch

    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return [x] + [padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
                  for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]  # fmt: skip


VIEWS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": lambda x: [x],
    "flip": lambda x: [x, x.flip(-1)],
    "shift": shifts,
    "flip_shift": lambda x: shifts(x) + shifts(x.flip(-1)),
}
AUTOCAST = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}  # torch dtypes by name


def predict(model: torch.nn.Module, x: torch.Tensor, views: str, batch_size: int = 1000,
            precision: str = "32-true") -> torch.Tensor:  # fmt: skip
    """Class probabilities of uint8 images `x`, averaged over the views named `views`."""
    import torch

    device = next(model.parameters()).device  # a logged model loads on the CPU
    dtype = getattr(torch, AUTOCAST[precision]) if precision in AUTOCAST else None
    probs = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device).float() / 255
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                views_ = [model(v).float() for v in VIEWS[views](batch)]
                probs.append(torch.stack(views_).mean(0))
    return torch.cat(probs)


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return (probs.argmax(1).cpu() == y).float().mean().item()


@dataclass
class LoggedRun:
    """A run's logged model, its splits and how it evaluated."""

    model: torch.nn.Module
    splits: Splits
    batch_size: int
    precision: str


@functools.cache
def splits_of(data_yaml: str) -> Splits:
    """The splits a `data` config makes, loaded once for all the runs that share it (the
    seeds of a recipe) instead of once per run."""
    from omegaconf import OmegaConf

    from fmnist_lab.data import load_splits

    return load_splits(OmegaConf.create(data_yaml))


def load_run(client: MlflowClient, run_id: str) -> LoggedRun:
    """The logged model of run `run_id` with the splits and precision it was tested on."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException
    from omegaconf import OmegaConf

    from fmnist_lab import tracking
    from fmnist_lab.predict import quiet

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no run {run_id} in {mlflow.get_tracking_uri()}") from None
    with quiet():
        try:
            text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
            cfg = OmegaConf.create(tracking.current_config(yaml.safe_load(text)))
            model = mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
        except (MlflowException, OSError):
            raise UserError(
                f"run {run_id} has no logged config and model (trained with log_model=false, "
                "or not by fmnist_lab.train)"
            ) from None
    precision = run.data.tags.get("precision", "32-true")
    splits = splits_of(OmegaConf.to_yaml(cfg.data))
    return LoggedRun(model, splits, int(cfg.data.eval_batch_size), precision)


def retest(client: MlflowClient, run_id: str, run: LoggedRun,
           views: Sequence[str]) -> dict[str, dict]:  # fmt: skip
    """{views: {"val": acc or None, "test": acc}} for run `run_id`; logged to the run."""
    splits, scores = run.splits, {}
    for name in views:
        scores[name] = {}
        for split, x, y in (("val", splits.val_x, splits.val_y),
                            ("test", splits.test_x, splits.test_y)):  # fmt: skip
            if len(y) == 0:  # trained with data.val_size=0: no validation split
                scores[name][split] = None
                continue
            probs = predict(run.model, x, name, run.batch_size, run.precision)
            scores[name][split] = accuracy(probs, y)
            if name != "none":
                client.log_metric(run_id, f"{split}_acc_tta_{name}", scores[name][split])
    return scores


def summarize(values: Sequence[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    if len(known) == 1:
        return f"{known[0]:.2%}"
    return f"{statistics.mean(known):.2%} +/- {statistics.stdev(known):.2%}"


def render(results: dict[str, dict[str, dict]], views: Sequence[str]) -> str:
    """One row per run and views, then the mean +/- std over the runs of each views."""
    lines = [f"{'run':<32}  {'views':<10}  {'val acc':>18}  {'test acc':>18}"]
    for run_id, scores in results.items():
        for name in views:
            val, test = scores[name]["val"], scores[name]["test"]
            lines.append(f"{run_id:<32}  {name:<10}  {summarize([val]):>18}  "
                         f"{summarize([test]):>18}")  # fmt: skip
    if len(results) > 1:
        for name in views:
            vals = [s[name]["val"] for s in results.values()]
            tests = [s[name]["test"] for s in results.values()]
            lines.append(f"{f'mean of {len(results)} runs':<32}  {name:<10}  "
                         f"{summarize(vals):>18}  {summarize(tests):>18}")  # fmt: skip
    return "\n".join(lines)


def chosen(results: dict[str, dict[str, dict]], views: Sequence[str]) -> str | None:
    """The view set with the highest mean validation accuracy over the runs, the fewer views
    (earlier in VIEWS) on a tie, and its figures; None without a validation split."""
    vals = {name: [s[name]["val"] for s in results.values()] for name in views}
    if len(views) < 2 or any(v is None for known in vals.values() for v in known):
        return None
    ordered = sorted(views, key=list(VIEWS).index)
    best = max(ordered, key=lambda name: statistics.mean(vals[name]))  # first of a tie
    tests = [s[best]["test"] for s in results.values()]
    return (f"chosen on validation: {best} (val {summarize(vals[best])}, "
            f"test {summarize(tests)})")  # fmt: skip


def recipe_runs(client: MlflowClient, args: argparse.Namespace) -> list[str]:
    """The run ids of the seeds `reproduce` counts for `args.recipe` (in seed order)."""
    import mlflow

    from fmnist_lab import reproduce

    reproduce.checked_recipes([args.recipe], args.seeds, args.data, args.set)
    cfg = reproduce.run_config(args.recipe, 0, args.data, args.set, None)
    found = reproduce.recorded(client, args.recipe, cfg, args.seeds).runs
    if not found:
        setting = f" --set {' '.join(args.set)}" if args.set else ""
        raise UserError(
            f"no run of {args.recipe} (seeds 0..{args.seeds - 1}{setting}) is recorded in "
            f"{mlflow.get_tracking_uri()}; train them with python -m fmnist_lab.reproduce "
            f"{args.recipe} --seeds {args.seeds}{setting}"
        )
    return [found[seed].info.run_id for seed in sorted(found)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-lab tta",
        description="Test logged runs again with test-time augmentation (views averaged).",
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_ID", help="runs of fmnist_lab.train")
    parser.add_argument("--recipe", default=None,
                        help="instead of run ids: the seeds of it reproduce recorded")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=3,
                        help="with --recipe: seeds 0..N-1 (3)")  # fmt: skip
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="with --recipe: the overrides reproduce trained it with")  # fmt: skip
    add_data(parser, help="with --recipe: the dataset (default: the recipe's own)")
    parser.add_argument("--views", nargs="+", choices=list(VIEWS), default=list(VIEWS),
                        help="views to score (default: all; none = the plain model)")  # fmt: skip
    add_tracking_uri(parser)
    return parser.parse_args(argv)


@exit_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # imported once parsed: --help answers without loading torch or MLflow
    import mlflow
    from mlflow import MlflowClient

    from fmnist_lab.tracking import check_server

    if bool(args.runs) == bool(args.recipe):
        raise UserError("name the runs to score: run ids, or --recipe NAME, not both")
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    check_server(mlflow.get_tracking_uri())
    client = MlflowClient()
    ids = recipe_runs(client, args) if args.recipe else args.runs
    # Every run is loaded before anything is scored or logged: one bad id records nothing.
    runs = {run_id: load_run(client, run_id) for run_id in dict.fromkeys(ids)}
    views = list(dict.fromkeys(args.views))
    results = {run_id: retest(client, run_id, run, views) for run_id, run in runs.items()}
    print(render(results, views))
    choice = chosen(results, views)
    if choice:
        print(choice)


if __name__ == "__main__":
    main()
