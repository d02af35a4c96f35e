"""`python -m fmnist_lab.export`: a sweep's finalist as an experiment file, so that
`python -m fmnist_lab.train experiment=<name>` trains exactly that model with that recipe.

    python -m fmnist_lab.export --study min_params_94 study_50k=50000 study_500k=500000

For each NAME=MAX_PARAMS the finalist with the highest validation accuracy (its trial's:
selection never looks at the test set) among those with at most MAX_PARAMS parameters is
written to `conf/experiment/NAME.yaml`: the config groups it builds on and every setting in
which the finalist's training config differs from them, less what belongs to a machine (data
folders, threads, the tracking store) and the seed. Its `reference:` block holds the
finalist's measured test accuracy, so `python -m fmnist_lab.reproduce NAME --seeds 3` trains
the seeds again and prints them next to the recorded figure.

With `--chosen`, the trials the sweep chooses as finalists are exported before they are
trained (a search that ends in one sitting, whose long finalists train elsewhere or later:
`reproduce NAME --seeds 3`, one process per seed): the same rule on the study's trials, and
the training config the sweep would give their seeds, built from the trial's own
`config.yaml`. Its `reference:` holds the validation accuracy it was chosen by
(`chosen_val_acc`, measured as the search trains), no test figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist_lab.errors import UserError, exit_cleanly

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from omegaconf import DictConfig

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("data", "model", "optimizer", "scheduler", "augmentation", "trainer")


def finalists(client: MlflowClient, study: str) -> list[Run]:
    """The study's finished finalist runs (newest parent run of that name)."""
    from fmnist_lab.report.runs import study_parent, study_runs

    parent = study_parent(client, study)
    return [
        run
        for run in study_runs(client, parent)
        if run.data.tags.get("role") == "finalist"
        and run.info.status == "FINISHED"
        and "test_accs" in run.data.tags
    ]


def selection_val(run: Run) -> float:
    """The validation accuracy a finalist was chosen by: after the sweep's rerank at the
    finalists' training length where there was one, else the search's."""
    metrics = run.data.metrics
    return metrics.get("rerank_val_acc", metrics["val_acc"])


def pick(runs: Sequence[Run], max_params: int) -> Run | None:
    """Within the budget, the finalist most accurate on validation (fewer parameters on a
    tie); finalists scored after a rerank come before those scored by the search alone."""
    within = [r for r in runs if r.data.metrics["params"] <= max_params]
    if not within:
        return None
    return max(
        within,
        key=lambda r: ("rerank_val_acc" in r.data.metrics, selection_val(r),
                       -r.data.metrics["params"]),
    )  # fmt: skip


@dataclass(frozen=True)
class Chosen:
    """A trial the sweep chooses as a finalist, not trained as one yet."""

    trial: int
    params: int
    val_acc: float
    run_id: str  # the trial's own run (its config.yaml)
    config: dict  # what the sweep's finalist seeds train


def chosen(client: MlflowClient, study: str) -> list[Chosen]:
    """The study's finalists as the sweep chooses them (sweep.finalists, validation only),
    each with the training config its seeds would get."""
    import mlflow
    import yaml
    from omegaconf import OmegaConf

    from fmnist_lab import tracking
    from fmnist_lab.report.runs import study_parent
    from fmnist_lab.report.study import load_optuna_study
    from fmnist_lab.sweep import fidelity
    from fmnist_lab.sweep.finalists import rerank_count, seed_overrides, select_finalists

    parent = study_parent(client, study)
    optuna_study = load_optuna_study(parent, None)
    if optuna_study is None:
        storage = parent.data.tags.get("optuna.storage")
        raise UserError(f"the Optuna study of '{study}' cannot be read at {storage}; run "
                        f"export where the sweep ran")  # fmt: skip
    parent_id = parent.info.run_id
    files = [a.path for a in client.list_artifacts(parent_id) if a.path.startswith("sweep_")]
    spec = OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{parent_id}/{files[0]}"))
    policy = spec.finalists
    if rerank_count(policy):
        raise UserError(f"study '{study}' chooses its finalists after a rerank; export them "
                        f"once they are trained (without --chosen)")  # fmt: skip
    fid = fidelity.of(spec)
    settings = []
    for item in seed_overrides(spec):
        key, _, value = item.partition("=")
        if (CONF / key).is_dir():  # a config group: the trial's own must already be it
            if key != "scheduler" or value != "wsd" or fid is None:
                raise UserError(f"sweep.finalists.overrides chooses '{item}'; export the "
                                f"finalists once they are trained (without --chosen)")  # fmt: skip
            continue
        settings.append(item)
    out = []
    for t in select_finalists(optuna_study, spec):
        run_id = t.user_attrs["mlflow_run_id"]
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml")
        config = OmegaConf.create(tracking.current_config(yaml.safe_load(text)))
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(settings))
        out.append(Chosen(t.number, int(t.user_attrs["params"]), float(t.user_attrs["val_acc"]),
                          run_id, OmegaConf.to_container(config, resolve=True)))  # fmt: skip
    return out


def finalist_config(run: Run) -> DictConfig:
    """The training config the finalist's seeds ran with (its `config.yaml` artifact)."""
    import mlflow
    import yaml
    from omegaconf import OmegaConf

    from fmnist_lab import tracking

    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/config.yaml")
    return OmegaConf.create(tracking.current_config(yaml.safe_load(text)))


def _compose(overrides: Sequence[str]) -> dict:
    """conf/train.yaml with these overrides, less the machine's settings."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fmnist_lab import tracking

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return tracking.drop_machine_keys(OmegaConf.to_container(cfg, resolve=True))


def group_choices(config: dict) -> dict[str, str]:
    """Per config group, the option the finalist's settings build on: same `_target_` (and
    `name`), same keys, and the most settings in common."""
    choices = {}
    for group in GROUPS:
        node = config[group]
        best, best_score = None, -1
        for path in sorted((CONF / group).glob("*.yaml")):
            option = _compose([f"{group}={path.stem}"])[group]
            if option.keys() != node.keys() or any(
                option.get(k) != node.get(k) for k in ("_target_", "name")
            ):
                continue
            score = sum(option[k] == node[k] for k in node)
            if score > best_score:
                best, best_score = path.stem, score
        if best is None:
            raise UserError(f"no option in conf/{group}/ matches the finalist's {group} settings")
        choices[group] = best
    return choices


def difference(config: dict, base: dict) -> dict:
    """The settings of `config` that `base` lacks or holds with another value, nested."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sub = difference(value, base[key])
            if sub:
                out[key] = sub
        elif key not in base or base[key] != value:
            out[key] = value
    return out


def experiment_text(name: str, budget: int, config: dict, run: Run, study: str) -> str:
    """The experiment file of one finalist."""
    accs = json.loads(run.data.tags["test_accs"])
    trial = run.data.tags.get("optuna.trial", "?")
    reference = {
        "label": f"{name} (study {study}, trial {trial})",
        "params": int(run.data.metrics["params"]),
        "test_acc": round(statistics.fmean(accs), 6),
    }
    provenance = (f"Trial {trial} of study '{study}' (run {run.info.run_id}), the most accurate "
                  f"on validation ({selection_val(run):.2%}) within {budget:,} parameters: "
                  f"fmnist-lab export.")  # fmt: skip
    return experiment_file(config, reference, provenance)


def chosen_text(name: str, budget: int, pick: Chosen, study: str) -> str:
    """The experiment file of a finalist the sweep chose but has not trained."""
    reference = {
        "label": f"{name} (study {study}, trial {pick.trial})",
        "params": pick.params,
        "chosen_val_acc": round(pick.val_acc, 6),  # not `val_acc`: a source's own figure
        "test_acc": None,
    }
    provenance = (f"Trial {pick.trial} of study '{study}' (run {pick.run_id}), chosen on "
                  f"validation ({pick.val_acc:.2%}) within {budget:,} parameters, before its "
                  f"seeds trained: fmnist-lab export --chosen.")  # fmt: skip
    return experiment_file(pick.config, reference, provenance)


def experiment_file(config: dict, reference: dict, provenance: str) -> str:
    """`config` as the config groups it builds on and the settings it changes in them."""
    import yaml

    from fmnist_lab import tracking

    config = tracking.drop_machine_keys(config)
    choices = group_choices(config)
    base = _compose([f"{g}={c}" for g, c in choices.items()])
    body = difference(config, base)
    body["reference"] = reference
    header = [
        "# @package _global_",
        f"# {provenance}",
        "defaults:",
        *(f"  - override /{group}: {choice}" for group, choice in choices.items()),
        "",
    ]
    return "\n".join(header) + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)


def parse_budget(item: str) -> tuple[str, int]:
    name, _, value = item.partition("=")
    try:
        budget = int(float(value))
    except ValueError:
        budget = 0
    if not name.isidentifier() or budget < 1:
        raise UserError(f"'{item}' is not NAME=MAX_PARAMS, e.g. best_50k=50000")
    return name, budget


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-lab export",
        description="Write a study's finalists as conf/experiment/NAME.yaml, one per budget.",
    )
    parser.add_argument("budgets", nargs="+", metavar="NAME=MAX_PARAMS")
    parser.add_argument("--study", required=True, help="the sweep's study name")
    parser.add_argument("--tracking-uri", help="else $MLFLOW_TRACKING_URI, else ./mlflow.db")
    parser.add_argument("--out", type=Path, default=CONF / "experiment",
                        help="folder of the files (default: conf/experiment)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace existing files")
    parser.add_argument(
        "--chosen",
        action="store_true",
        help="the trials the sweep chooses as finalists, before they train",
    )
    return parser.parse_args(argv)


@exit_cleanly
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # imported once parsed: --help answers without loading torch or MLflow
    import mlflow
    from mlflow import MlflowClient
    from omegaconf import OmegaConf

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    budgets = [parse_budget(item) for item in args.budgets]
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    picks = chosen(client, args.study) if args.chosen else []
    runs = [] if args.chosen else finalists(client, args.study)
    if not (picks or runs):
        raise UserError(f"study '{args.study}' has no " + ("trial at its top rung yet"
                        if args.chosen else "finished finalists yet (--chosen: the trials "
                        "the sweep chooses, before they train)"))  # fmt: skip
    texts = {}
    for name, budget in budgets:
        path = args.out / f"{name}.yaml"
        if path.exists() and not args.force:
            raise UserError(f"{path} exists; --force replaces it")
        if args.chosen:
            within = [p for p in picks if p.params <= budget]
            found = max(within, key=lambda p: (p.val_acc, -p.params), default=None)
            sizes = [p.params for p in picks]
        else:
            found = pick(runs, budget)
            sizes = [int(r.data.metrics["params"]) for r in runs]
        if found is None:
            raise UserError(f"no finalist of '{args.study}' has at most {budget:,} parameters "
                            f"(the smallest has {min(sizes):,})")  # fmt: skip
        if args.chosen:
            texts[path] = chosen_text(name, budget, found, args.study)
        else:
            config = OmegaConf.to_container(finalist_config(found), resolve=True)
            texts[path] = experiment_text(name, budget, config, found, args.study)
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in texts.items():  # written only once every budget has its finalist
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
