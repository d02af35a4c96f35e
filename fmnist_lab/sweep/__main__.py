"""`fmnist-lab sweep sweep=<name> [key=value ...]`, or `python -m fmnist_lab.sweep ...`."""

from __future__ import annotations

import hydra
import mlflow
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fmnist_lab.errors import exit_cleanly
from fmnist_lab.sweep.run import run_sweep
from fmnist_lab.sweep.worker import quiet


@hydra.main(version_base="1.3", config_path="../../conf", config_name="sweep")
@exit_cleanly
def main(cfg: DictConfig) -> None:
    quiet()
    overrides = list(HydraConfig.get().overrides.task)
    result = run_sweep(cfg, overrides)
    print(f"study {result.study_name}: MLflow parent run {result.parent_run_id} "
          f"at {mlflow.get_tracking_uri()}")  # fmt: skip


if __name__ == "__main__":
    main()
