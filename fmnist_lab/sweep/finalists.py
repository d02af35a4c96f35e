"""After the search: the finalists chosen on validation, optionally reranked at the
finalists' length, retrained with several seeds on all training images and tested once."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import optuna
from mlflow import MlflowClient
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab import evaluate, tracking
from fmnist_lab.sweep.config import WorkerContext, check_finalist_rule, rerank_count
from fmnist_lab.sweep.progress import log_study_summary, pareto_trials
from fmnist_lab.train import train


@dataclass
class Finalist:
    trial: int
    params: int
    val_acc: float
    test_accs: list[float]
    run_id: str
    model_uri: str | None = None  # seed 0's model, the one the registry takes
    rerank_val_acc: float | None = None  # validation accuracy at the finalists' length

    @property
    def selection_val(self) -> float:
        """The validation accuracy it was chosen by (after reranking, where there was one)."""
        return self.val_acc if self.rerank_val_acc is None else self.rerank_val_acc

    @property
    def mean(self) -> float:
        return sum(self.test_accs) / len(self.test_accs)

    @property
    def std(self) -> float:
        m = self.mean
        n = len(self.test_accs)
        return math.sqrt(sum((a - m) ** 2 for a in self.test_accs) / (n - 1)) if n > 1 else 0.0


def _complete(study: optuna.Study, spec: DictConfig) -> list[FrozenTrial]:
    """The study's COMPLETE trials that meet `constraints.min_val_acc`."""
    floor = spec.constraints.min_val_acc
    return [
        t for t in study.get_trials(states=(TrialState.COMPLETE,))
        if floor is None or t.user_attrs["val_acc"] >= floor
    ]  # fmt: skip


def budget_ranking(trials: Sequence[FrozenTrial], budget: int) -> list[FrozenTrial]:
    """The trials within `budget` parameters, most accurate on validation first (fewer
    parameters first on a tie)."""
    within = [t for t in trials if t.user_attrs["params"] <= budget]
    return sorted(within, key=lambda t: (-t.user_attrs["val_acc"], t.user_attrs["params"]))


def select_finalists(
    study: optuna.Study, spec: DictConfig, longer: Mapping[int, float] | None = None
) -> list[FrozenTrial]:
    """Chosen on validation results only. `pareto` / `top_k`: at most `top_k`; of a
    multi-objective study the Pareto set (or every trial), most accurate first; of a
    single-objective one, the best by its objective. `budgets`: the frontier, for each
    parameter budget in `finalists.budgets` the most accurate trial within it (each once);
    given `longer` (`finalists.rerank: k`), the most accurate of the budget's k best trials
    by `longer`, their validation accuracy after the finalists' training length (`rerank`)."""
    policy = spec.finalists
    complete = _complete(study, spec)
    check_finalist_rule(policy)
    if policy.select == "budgets":
        chosen: dict[int, FrozenTrial] = {}
        for budget in sorted(policy.budgets):
            ranked = budget_ranking(complete, budget)
            if ranked and rerank_count(policy) and longer is not None:
                pool = ranked[: rerank_count(policy)]
                ranked = [max(pool, key=lambda t: (longer[t.number], -t.user_attrs["params"]))]
            if ranked:
                chosen[ranked[0].number] = ranked[0]
        return sorted(chosen.values(), key=lambda t: t.user_attrs["params"])
    if len(study.directions) > 1:
        pool = pareto_trials(study) if policy.select == "pareto" else complete
        ranked = sorted(pool, key=lambda t: t.user_attrs["val_acc"], reverse=True)
    else:
        sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
        ranked = sorted(complete, key=lambda t: sign * t.values[0])
        if policy.select == "pareto":
            ranked = ranked[:1]
    return ranked[: policy.top_k]


def rerank(ctx: WorkerContext, study: optuna.Study) -> dict[int, float]:
    """`finalists.rerank: k`: the k trials per budget that the search ranked best, each
    trained again (seed 0) for the finalists' length on all training images less the
    validation split, and scored on that split: short trials rank how fast a model learns,
    not where it ends. No test set is involved. Results are kept in the study's user
    attributes, so a resumed or second process does not train them again."""
    policy = ctx.spec.finalists
    count = rerank_count(policy)
    epochs = policy.get("rerank_epochs") or policy.epochs
    complete = _complete(study, ctx.spec)
    pool: dict[int, FrozenTrial] = {}
    for budget in sorted(policy.budgets):
        pool.update((t.number, t) for t in budget_ranking(complete, budget)[:count])
    known = study.user_attrs
    scores = {}
    if pool:
        print(f"rerank: {len(pool)} trials ({count} best per budget), {epochs} epochs "
              f"on the training images, scored on the validation split")  # fmt: skip
    for number, t in sorted(pool.items(), key=lambda item: item[1].user_attrs["params"]):
        key = f"rerank:{epochs}ep:t{number}"
        if key in known:
            scores[number] = known[key]
        else:
            extra = [*policy.rerank_overrides, f"trainer.max_epochs={epochs}",
                     "runtime.progress_bar=false"]  # fmt: skip
            cfg_t = ctx.trial_config(t.user_attrs["overrides"], *extra)
            tags = {"role": "rerank", "optuna.study": study.study_name,
                    "optuna.trial": str(number), "recipe": f"seed 0 x {epochs} epochs"}  # fmt: skip
            splits = ctx.splits_for(cfg_t.data)
            result = train(cfg_t, parent_run_id=ctx.parent_run_id, tags=tags, splits=splits,
                           name_prefix=f"rerank-t{number}-")  # fmt: skip
            scores[number] = result.metrics["val_acc"]
            study.set_user_attr(key, scores[number])
        print(f"  trial {number} ({t.user_attrs['params']:,} params): val_acc "
              f"{t.user_attrs['val_acc']:.4f} in the search, {scores[number]:.4f} after {epochs} "
              f"epochs")  # fmt: skip
    return scores


def run_finalists(cfg, overrides: list[str], study: optuna.Study, parent_id: str):
    """Retrain each finalist on all training images with several seeds; test once each."""
    policy = cfg.sweep.finalists
    log_study_summary(study)
    if policy.seeds < 1:
        return []
    ctx = WorkerContext(cfg, overrides, parent_id, mlflow.get_tracking_uri(), None)
    longer = rerank(ctx, study) if rerank_count(policy) else None
    chosen = select_finalists(study, cfg.sweep, longer)
    if not chosen:
        return []
    print(f"finalists: {len(chosen)} trials x {policy.seeds} seeds, {policy.epochs} epochs on all "
          f"training images")  # fmt: skip
    recipe = f"{policy.seeds} seeds x {policy.epochs} epochs"
    done = finished_finalists(parent_id, recipe)
    results = []
    for t in chosen:
        if t.number in done:  # a resumed sweep keeps the finalists it already has
            run = done[t.number]
            accs = json.loads(run.data.tags["test_accs"])
            results.append(
                Finalist(
                    t.number,
                    t.user_attrs["params"],
                    t.user_attrs["val_acc"],
                    accs,
                    run.info.run_id,
                    run.data.tags.get("model_uri"),
                    run.data.metrics.get("rerank_val_acc"),
                )
            )
            continue
        base = [*policy.overrides, f"trainer.max_epochs={policy.epochs}",
                "runtime.progress_bar=false"]  # fmt: skip
        cfg_t = ctx.trial_config(t.user_attrs["overrides"], *base)
        size = tracking.human_count(t.user_attrs["params"])
        name = f"finalist-t{t.number}-{cfg_t.model.name}-{size}"
        tags = {
            "role": "finalist",
            "optuna.study": study.study_name,
            "optuna.trial": str(t.number),
            "recipe": recipe,
            "model": cfg_t.model.name,
            "dataset": cfg_t.data.name,
        }
        with tracking.tracked_run(cfg_t, name, tags, parent_id) as run:
            tracking.log_param_count(t.user_attrs["params"])
            mlflow.log_metric("val_acc", t.user_attrs["val_acc"])
            if longer is not None:
                mlflow.log_metric("rerank_val_acc", longer[t.number])
            seeds = []
            for seed in range(policy.seeds):
                seed_cfg = ctx.trial_config(t.user_attrs["overrides"], *base, f"seed={seed}")
                splits = ctx.splits_for(seed_cfg.data)
                result = train(
                    seed_cfg,
                    parent_run_id=run.info.run_id,
                    tags={**tags, "role": "finalist_seed", "seed": str(seed)},
                    splits=splits,
                    name_prefix=f"finalist-t{t.number}-seed{seed}-",
                )
                seeds.append(result)
            accs = [r.metrics["test_acc"] for r in seeds]
            finalist = Finalist(t.number, t.user_attrs["params"], t.user_attrs["val_acc"], accs,
                                run.info.run_id, seeds[0].model_uri,
                                None if longer is None else longer[t.number])  # fmt: skip
            mlflow.log_metrics({
                "test_acc_mean": finalist.mean,
                "test_acc_std": finalist.std,
                "train_time_s": sum(r.metrics["train_time_s"] for r in seeds) / len(seeds),
            })  # fmt: skip
            mlflow.set_tag("test_accs", json.dumps(accs))
            if finalist.model_uri:
                mlflow.set_tag("model_uri", finalist.model_uri)
            if all(r.confusion is not None for r in seeds):
                evaluate.log_confusion(sum(r.confusion for r in seeds), splits.classes,
                                       f"{len(seeds)} seeds,")  # fmt: skip
                # The whole evaluation of seed 0 too, so the finalist run shows every plot.
                with tempfile.TemporaryDirectory() as tmp:
                    local = MlflowClient().download_artifacts(seeds[0].run_id, "evaluation", tmp)
                    mlflow.log_artifacts(local, "evaluation_seed0")
        results.append(finalist)
        print(f"  finalist trial {t.number}: test_acc {finalist.mean:.4f} +/- {finalist.std:.4f}")
    results.sort(key=lambda f: f.params)
    mlflow.log_dict([f.__dict__ | {"test_acc_mean": f.mean, "test_acc_std": f.std}
                     for f in results], "finalists.json")  # fmt: skip
    smallest = next((f for f in results if f.mean >= policy.target_acc), None)
    if smallest:
        mlflow.log_metric("smallest_params_at_target", smallest.params)
        mlflow.set_tag("smallest_at_target_trial", str(smallest.trial))
    return results


def finished_finalists(parent_id: str, recipe: str) -> dict[int, Any]:
    """Finalist runs of this study already FINISHED with the same recipe, by trial number."""
    client = MlflowClient()
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.role = 'finalist' "
        f"and attributes.status = 'FINISHED'",
    )
    return {
        int(r.data.tags["optuna.trial"]): r
        for r in runs
        if r.data.tags.get("recipe") == recipe and "test_accs" in r.data.tags
    }


def print_finalists(finalists: list[Finalist], policy: DictConfig) -> None:
    if not finalists:
        print("no finalists (no trial completed, or finalists.seeds=0)")
        return
    target = policy.target_acc
    smallest = next((f for f in finalists if f.mean >= target), None)
    reranked = any(f.rerank_val_acc is not None for f in finalists)
    longer = f"  {'reranked':>8}" if reranked else ""
    print(
        f"\n{'trial':>5}  {'params':>10}  {'val_acc':>8}{longer}  {'test_acc (mean +/- std)':>24}"
    )
    for f in finalists:
        mark = f"  <- smallest at >= {target:.1%}" if f is smallest else ""
        longer = f"  {f.rerank_val_acc:>8.4f}" if reranked else ""
        print(f"{f.trial:>5}  {f.params:>10,}  {f.val_acc:>8.4f}{longer}  "
              f"{f.mean:>15.4f} +/- {f.std:.4f}{mark}")  # fmt: skip
    if smallest is None:
        print(f"no finalist reaches {target:.1%} mean test accuracy")
