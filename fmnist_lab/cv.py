"""`python -m fmnist_lab.cv <overrides> folds=5`: k-fold cross-validation of one config.

A parent MLflow run per cross-validation, a child run per fold (trained by
`fmnist_lab.train.train` on that fold's splits), the folds' mean and standard deviation on
the parent.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass

import hydra
import mlflow
from omegaconf import DictConfig

from fmnist_lab import measures, settings, tracking
from fmnist_lab.data import fold_splits
from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.models import build_model, count_params
from fmnist_lab.train import train


@dataclass
class CvResult:
    run_id: str
    fold_run_ids: list[str]
    val_accs: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.val_accs)

    @property
    def std(self) -> float:
        return statistics.stdev(self.val_accs) if len(self.val_accs) > 1 else 0.0


def cross_validate(cfg: DictConfig) -> CvResult:
    """Train `cfg` once per fold; log each fold as a child run and the summary on the parent."""
    settings.check(cfg, settings.CrossValidation)
    n_params = count_params(build_model(cfg.model))  # a bad model config fails before the data
    folds = fold_splits(cfg.data, cfg.folds)
    first = next(folds)  # loads the data and checks `folds` before any run is started
    tracking.configure(cfg.tracking.uri, cfg.tracking.experiment)
    name = f"cv{cfg.folds}-{cfg.model.name}-{tracking.human_count(n_params)}"
    tags = {
        "role": "cv",
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "folds": str(cfg.folds),
    }
    fold_runs, accs = [], []
    with tracking.tracked_run(cfg, name, tags) as parent:
        tracking.log_param_count(n_params)
        for i, splits in enumerate([first, *folds]):
            result = train(
                cfg,
                parent_run_id=parent.info.run_id,
                splits=splits,
                tags={**tags, "role": "cv_fold", "fold": str(i)},
                name=f"fold{i}-{{model}}-{{size}}",
            )
            fold_runs.append(result.run_id)
            accs.append(result.metrics["val_acc"])
            mlflow.log_metric("fold_val_acc", accs[-1], step=i)
            print(
                f"fold {i}: val_acc {accs[-1]:.4f} ({len(splits.train_y):,} train / "
                f"{len(splits.val_y):,} validation images)"
            )
        result = CvResult(parent.info.run_id, fold_runs, accs)
        # The folds' mean is the run's `val_acc`, as a finalist's seeds' mean is its `test_acc`.
        images = len(first.val_y)
        mean, std = measures.mean_and_std(accs, images)
        mlflow.log_metrics({"val_acc": mean, "val_acc_std": std})
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="cv")
@exit_cleanly
def main(cfg: DictConfig) -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    try:
        result = cross_validate(cfg)
    except FloatingPointError as err:
        raise UserError(f"training diverged ({err}); try a lower optimizer.lr") from None
    print(
        f"cv run {result.run_id}: val_acc {result.mean:.4f} +/- {result.std:.4f} over "
        f"{len(result.val_accs)} folds\nMLflow: {mlflow.get_tracking_uri()}"
    )


if __name__ == "__main__":
    main()
