"""After the search: the finalists chosen on validation, optionally reranked at the
finalists' length, retrained with several seeds on all training images and tested once."""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import optuna
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig
from optuna.trial import FrozenTrial, TrialState

from fmnist_lab import continuation, evaluate, measures, tracking
from fmnist_lab.sweep import faults, fidelity
from fmnist_lab.sweep.config import WorkerContext, rerank_count, trial_run_config
from fmnist_lab.sweep.progress import log_study_summary, pareto_trials
from fmnist_lab.sweep.promotion import Result, fronts
from fmnist_lab.sweep.record import Record
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
    val_measure: str | None = None  # how `selection_val` was measured (see val_measure)
    test_images: int | None = None  # in the test split (None in records made before it was kept)

    @property
    def selection_val(self) -> float:
        """The validation accuracy it was chosen by (after reranking, where there was one)."""
        return self.val_acc if self.rerank_val_acc is None else self.rerank_val_acc

    @property
    def mean(self) -> float:
        """The seeds' mean test accuracy, as the finalist run logs it (`test_acc`)."""
        return measures.mean_and_std(self.test_accs, self.test_images)[0]

    @property
    def std(self) -> float:
        """Their standard deviation (`test_acc_std`; 0 for one seed)."""
        return measures.mean_and_std(self.test_accs, self.test_images)[1]


def _complete(study: optuna.Study, spec: DictConfig) -> list[FrozenTrial]:
    """The study's COMPLETE trials that meet `constraints.min_val_acc`; with `sweep.fidelity`
    those that reached the top rung, scored there."""
    floor = spec.constraints.min_val_acc
    fid = fidelity.of(spec)
    if fid is not None:  # only the top rung's results: where each model ends
        trials = fidelity.top_trials(study, fid)
    else:
        trials = study.get_trials(states=(TrialState.COMPLETE,))
    return [t for t in trials if floor is None or t.user_attrs["val_acc"] >= floor]


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
        if policy.select != "pareto":
            pool = complete
        elif fidelity.of(spec) is not None:  # the Pareto set of the top rung
            pool = top_rung_front(complete)
        else:
            pool = pareto_trials(study)
        ranked = sorted(pool, key=lambda t: t.user_attrs["val_acc"], reverse=True)
    else:
        sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
        ranked = sorted(complete, key=lambda t: sign * t.values[0])
        if policy.select == "pareto":
            ranked = ranked[:1]
    return ranked[: policy.top_k]


def top_rung_front(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials no other is at least as accurate and as small as (and better in one)."""
    results = [Result(t.number, t.user_attrs["val_acc"], t.user_attrs["params"]) for t in trials]
    front = {r.trial for r in fronts(results)[0]} if results else set()
    return [t for t in trials if t.number in front]


def rerank(ctx: WorkerContext, study: optuna.Study) -> dict[int, float]:
    """`finalists.rerank: k`: the k trials per budget that the search ranked best, each
    trained again (seed 0) for the finalists' length on all training images less the
    validation split, and scored on that split: short trials rank how fast a model learns,
    not where it ends. No test set is involved. Each is a piece of work in the study's record
    (`rerank:<epochs>ep:t<n>`), so a resumed or second process does not train it again."""
    policy = ctx.spec.finalists
    count = rerank_count(policy)
    epochs = rerank_epochs(policy)
    complete = _complete(study, ctx.spec)
    pool: dict[int, FrozenTrial] = {}
    for budget in sorted(policy.budgets):
        pool.update((t.number, t) for t in budget_ranking(complete, budget)[:count])
    record = Record(study)
    scores = {}
    if pool:
        print(f"rerank: {len(pool)} trials ({count} best per budget), {epochs} epochs "
              f"on the training images, scored on the validation split")  # fmt: skip
    for number, t in sorted(pool.items(), key=lambda item: item[1].user_attrs["params"]):
        key = f"rerank:{epochs}ep:t{number}"
        if record.done(key) is None:
            cfg_t = rerank_config(ctx, t)
            tags = {"role": "rerank", "optuna.study": study.study_name, "work": key,
                    "optuna.trial": str(number), "recipe": f"seed 0 x {epochs} epochs",
                    "study_uid": ctx.study_uid}  # fmt: skip
            with record.attempt(key):
                train(cfg_t, callbacks=faults.callbacks("rerank"),
                      parent_run_id=ctx.parent_run_id, tags=tags,
                      splits=ctx.splits_for(cfg_t.data), name=f"t{number}-{{size}}-rerank",
                      on_result=lambda r, key=key: record.finish(
                          key, {"val_acc": r.metrics["val_acc"]}, r.run_id))  # fmt: skip
        scores[number] = record.done(key)["val_acc"]
        print(f"  trial {number} ({t.user_attrs['params']:,} params): val_acc "
              f"{t.user_attrs['val_acc']:.4f} in the search, {scores[number]:.4f} after {epochs} "
              f"epochs")  # fmt: skip
    return scores


def rerank_epochs(policy: DictConfig) -> int:
    return policy.get("rerank_epochs") or policy.epochs


def rerank_config(ctx: WorkerContext, t: FrozenTrial) -> DictConfig:
    policy = ctx.spec.finalists
    return ctx.trial_config(t.user_attrs["overrides"], *policy.rerank_overrides,
                            f"trainer.max_epochs={rerank_epochs(policy)}",
                            "runtime.progress_bar=false")  # fmt: skip


def val_measure(cfg: DictConfig) -> str:
    """How a validation accuracy was measured: the split, and the training before it. Two
    scores compare only when this is the same."""
    data = cfg.data
    return (
        f"{data.name} val_size={data.val_size} split_seed={data.split_seed} "
        f"train_fraction={data.train_fraction:g} epochs={cfg.trainer.max_epochs}"
    )


def finalist_key(number: int, policy: DictConfig) -> str:
    return f"finalist:t{number}:{policy.seeds}x{policy.epochs}ep"


def run_finalists(cfg, overrides: list[str], study: optuna.Study, parent_id: str,
                  study_uid: str | None = None) -> list[Finalist]:  # fmt: skip
    """Retrain each finalist on all training images with several seeds; test once each.
    Each finalist and each of its seeds is a piece of work in the study's record: a resumed
    sweep keeps those done and does the others again."""
    policy = cfg.sweep.finalists
    log_study_summary(study)
    if policy.seeds < 1:
        return []
    ctx = WorkerContext(cfg, overrides, parent_id, mlflow.get_tracking_uri(), None,
                        study_uid=study_uid)  # fmt: skip
    longer = rerank(ctx, study) if rerank_count(policy) else None
    chosen = select_finalists(study, cfg.sweep, longer)
    if not chosen:
        return []
    print(f"finalists: {len(chosen)} trials x {policy.seeds} seeds, {policy.epochs} epochs on all "
          f"training images")  # fmt: skip
    record = Record(study)
    results = []
    for t in chosen:
        key = finalist_key(t.number, policy)
        trained = record.done(key) is None  # else kept from an earlier process or command
        if trained:
            retrain(ctx, study, record, t, key, None if longer is None else longer[t.number])
        done = record.done(key)
        finalist = Finalist(t.number, t.user_attrs["params"], t.user_attrs["val_acc"],
                            done["test_accs"], record.get(key)["run_id"], done["model_uri"],
                            done.get("rerank_val_acc"), done.get("val_measure"),
                            done.get("test_images"))  # fmt: skip
        results.append(finalist)
        if trained:
            print(f"  finalist trial {t.number}: test_acc {finalist.mean:.4f} "
                  f"+/- {finalist.std:.4f}")  # fmt: skip
    results.sort(key=lambda f: f.params)
    fidelity.remove_checkpoints(ctx.cfg)  # every seed's, kept only while it trained
    mlflow.log_dict([f.__dict__ | {"test_acc": f.mean, "test_acc_std": f.std}
                     for f in results], "finalists.json")  # fmt: skip
    smallest = next((f for f in results if f.mean >= policy.target_acc), None)
    if smallest:
        mlflow.log_metric("smallest_params_at_target", smallest.params)
        mlflow.set_tag("smallest_at_target_trial", str(smallest.trial))
    return results


def seed_checkpoint(cfg: DictConfig, key: str,
                    client: MlflowClient) -> tuple[Path, str | None]:  # fmt: skip
    """Where finalist seed `key` saves itself after each epoch, and the run of a killed
    attempt that saved an epoch there, to resume (None: train from the start, in a new run;
    the cut attempt's run stays as the record ended it)."""
    path = fidelity.checkpoints_dir(cfg) / "finalists" / f"{key.replace(':', '_')}.ckpt"
    owner = continuation.owner_of(path)
    if owner is None or not path.exists():
        return path, None
    try:
        status = client.get_run(owner).info.status
    except MlflowException:  # the run is gone (another store, or deleted)
        return path, None
    return path, owner if status != "FINISHED" else None


def seed_overrides(spec: DictConfig) -> list[str]:
    """What a finalist's seeds train with on top of their trial's overrides: with
    sweep.fidelity the top rung's schedule (WSD) at the finalists' length, then
    `finalists.overrides` and that length."""
    policy, fid = spec.finalists, fidelity.of(spec)
    return [*(fid.overrides(policy.epochs) if fid else []), *policy.overrides,
            f"trainer.max_epochs={policy.epochs}"]  # fmt: skip


def retrain(ctx: WorkerContext, study: optuna.Study, record: Record, t: FrozenTrial, key: str,
            rerank_val_acc: float | None) -> None:  # fmt: skip
    """One finalist: a run whose children are its seeds, each trained on all training images
    and tested once; seeds already done (by a killed attempt) move under the new run."""
    policy = ctx.spec.finalists
    fid = fidelity.of(ctx.spec)
    base = [*seed_overrides(ctx.spec), "runtime.progress_bar=false"]
    cfg_t = ctx.trial_config(t.user_attrs["overrides"], *base)
    tags = {
        "role": "finalist",
        "optuna.study": study.study_name,
        "optuna.trial": str(t.number),
        "recipe": f"{policy.seeds} seeds x {policy.epochs} epochs",
        "model": cfg_t.model.name,
        "dataset": cfg_t.data.name,
        "study_uid": ctx.study_uid,
    }
    # The score it was chosen by, and how that score was measured (the registry compares
    # champions only on scores measured the same way).
    if rerank_val_acc is not None:
        measured = rerank_config(ctx, t)
    else:
        top = fid.overrides(fid.top) if fid else []  # chosen at the top rung
        measured = trial_run_config(ctx, [*t.user_attrs["overrides"], *top])
    client = MlflowClient()
    name = tracking.run_name(f"t{t.number}-{{size}}-final", cfg_t.model.name,
                             t.user_attrs["params"])  # fmt: skip
    with record.attempt(key), tracking.tracked_run(cfg_t, name, tags | {"work": key},
                                                   ctx.parent_run_id) as run:  # fmt: skip
        record.ran(key, run.info.run_id)
        tracking.log_param_count(t.user_attrs["params"])
        mlflow.log_metric("val_acc", t.user_attrs["val_acc"])
        if rerank_val_acc is not None:
            mlflow.log_metric("rerank_val_acc", rerank_val_acc)
        seeds = []
        for seed in range(policy.seeds):
            seed_key = f"{key}:seed{seed}"
            if record.done(seed_key) is None:
                seed_cfg = ctx.trial_config(t.user_attrs["overrides"], *base, f"seed={seed}")
                saved, reopen = seed_checkpoint(ctx.cfg, seed_key, client)
                with record.attempt(seed_key):
                    train(seed_cfg, callbacks=faults.callbacks("finalist_seed"),
                          checkpoint=saved, reopen=reopen,
                          resume_from=saved if reopen else None,
                          parent_run_id=run.info.run_id,
                          tags={**tags, "role": "finalist_seed", "seed": str(seed),
                                "work": seed_key},
                          splits=ctx.splits_for(seed_cfg.data),
                          name=f"t{t.number}-{{size}}-s{seed}",
                          on_result=lambda r, k=seed_key: record.finish(k, {
                              "test_acc": r.metrics["test_acc"],
                              "train_time_s": r.metrics["train_time_s"],
                              "model_uri": r.model_uri,
                              "confusion": None if r.confusion is None else r.confusion.tolist(),
                          }, r.run_id))  # fmt: skip
                continuation.remove(saved)
            else:  # done by an attempt that was killed after it: it becomes this run's child
                client.set_tag(record.get(seed_key)["run_id"], "mlflow.parentRunId",
                               run.info.run_id)  # fmt: skip
            seeds.append(record.get(seed_key))
        accs = [s["result"]["test_acc"] for s in seeds]
        test_images = len(ctx.splits_for(cfg_t.data).test_y)
        mean, std = measures.mean_and_std(accs, test_images)
        seconds = statistics.fmean(s["result"]["train_time_s"] for s in seeds)
        mlflow.log_metrics({"test_acc": mean, "test_acc_std": std,
                            "train_time_s": measures.rounded("train_time_s", seconds)})  # fmt: skip
        mlflow.set_tag("test_accs", json.dumps(accs))
        model_uri = seeds[0]["result"]["model_uri"]
        if model_uri:
            mlflow.set_tag("model_uri", model_uri)
        if all(s["result"]["confusion"] is not None for s in seeds):
            total = sum(np.array(s["result"]["confusion"]) for s in seeds)
            evaluate.log_confusion(total, ctx.splits_for(cfg_t.data).classes,
                                   f"{len(seeds)} seeds,")  # fmt: skip
            # The whole evaluation of seed 0 too, so the finalist run shows every plot.
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(seeds[0]["run_id"], "evaluation", tmp)
                mlflow.log_artifacts(local, "evaluation_seed0")
        record.finish(key, {"test_accs": accs, "test_images": test_images, "model_uri": model_uri,
                            "rerank_val_acc": rerank_val_acc,
                            "val_measure": val_measure(measured)})  # fmt: skip


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
