"""`python -m fmnist_lab.train`: compose the config, train one model, record it in MLflow."""

from __future__ import annotations

import ctypes
import logging
import math
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import hydra
import mlflow
import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from fmnist_lab import continuation, evaluate, lineage, resume, settings, tracking
from fmnist_lab.continuation import EpochCheckpoint
from fmnist_lab.data import DataModule, Splits, load_splits
from fmnist_lab.epoch_logger import MlflowEpochLogger
from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.measures import rounded, split_of
from fmnist_lab.models import build_model, count_params
from fmnist_lab.models.predictor import Predictor
from fmnist_lab.module import Classifier, Teacher


@dataclass
class RunResult:
    run_id: str
    name: str
    params: int
    metrics: dict[str, float]
    model_uri: str | None
    confusion: np.ndarray | None = None  # test confusion matrix, when the run tested


def train(
    cfg: DictConfig,
    callbacks: Sequence[pl.Callback] = (),
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    splits: Splits | None = None,
    name: str = "{model}-{size}",
    on_result: Callable[[RunResult], None] | None = None,
    resume_from: str | Path | None = None,
    run_id: str | None = None,
    checkpoint: str | Path | None = None,
    reopen: str | None = None,
) -> RunResult:
    """Train, validate every epoch, optionally test, and log it all to one MLflow run.

    A sweep passes its trial's callbacks, the parent run, extra tags and the splits it has
    already loaded (they must come from `cfg.data`). `name` is the run's name, `{model}`
    and `{size}` filled in (`convnet-14k`; a sweep's trial: `t12-{size}`). `on_result` is
    called with the result while the run is still RUNNING: a sweep records it in its study
    first, so that a FINISHED run always has its result recorded (docs/run_state.md).
    `resume_from`: a checkpoint of fmnist_lab.continuation to train on from; `run_id`: an
    existing run to log to (a sweep's trial continued to its next rung), which keeps its
    config and parameters and ends FINISHED however the continuation ends.
    `checkpoint`: save the training there after every epoch (fmnist_lab/resume.py); `reopen`:
    the run of a killed attempt, resumed (from `resume_from`, its last epoch checkpoint, if
    given), which ends as a new run would.
    """
    # Batches come from device tensors, not a DataLoader, and only epoch metrics are logged:
    # Lightning's hints about workers and logging intervals do not apply.
    warnings.filterwarnings("ignore", message=".*(num_workers|log_every_n_steps|LeafSpec).*")
    settings.check(cfg)  # every setting, before anything is built or recorded
    pl.seed_everything(cfg.seed, verbose=False)
    runtime = cfg.runtime
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.keep_freed_memory:
        keep_freed_memory()
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    lr = scaled_lr(cfg)
    net = build_model(cfg.model)  # before the data: a bad model config fails at once
    n_params = count_params(net)
    if splits is None:
        splits = load_splits(cfg.data)
    if cfg.tracking.uri:  # where a teacher's runs:/ or models:/ URI is resolved
        mlflow.set_tracking_uri(cfg.tracking.uri)
    teacher = load_teacher(cfg.distill, len(splits.classes), splits.train_x[:2].float() / 255)
    module = Classifier(
        net,
        optimizer=instantiate(cfg.optimizer, lr=lr),
        mean=splits.mean,
        std=splits.std,
        scheduler=instantiate(cfg.scheduler),
        augment=instantiate(cfg.augmentation),
        label_smoothing=cfg.label_smoothing,
        num_classes=len(splits.classes),
        channels_last=runtime.channels_last,
        compile=runtime.compile,
        teacher=teacher,
        ema_decay=cfg.ema.decay,
        bn_lr_scale=cfg.bn_lr_scale,
    )
    datamodule = DataModule(splits, cfg.data.batch_size, cfg.data.eval_batch_size, cfg.seed)

    tracking.configure(cfg.tracking.uri, cfg.tracking.experiment)
    name = tracking.run_name(name, cfg.model.name, n_params)
    run_tags = {"dataset": cfg.data.name, "model": cfg.model.name, "precision": precision,
                **(tags or {})}  # fmt: skip
    if hasattr(net, "weights"):  # ResNet-18 says whether it starts from ImageNet weights
        run_tags["weights"] = net.weights
    sizes = {"train": len(splits.train_y), "val": len(splits.val_y), "test": len(splits.test_y)}
    if run_id is not None:
        opened = tracking.continued_run(run_id, run_tags)
    elif reopen is not None:
        opened = tracking.resumed_run(reopen, run_tags, parent_run_id)
    else:
        opened = tracking.tracked_run(cfg, name, run_tags, parent_run_id)
    with opened as run:
        if run_id is None and reopen is None:
            tracking.log_param_count(n_params)
            mlflow.log_param("lr_effective", lr)  # optimizer.lr after lr_scaling
            lineage.log_inputs(cfg.data, splits, tested=cfg.test, fold=run_tags.get("fold"))
        logger = MlflowEpochLogger(run.info.run_id, sizes)
        saving: list[pl.Callback] = []
        if checkpoint is not None:
            continuation.own(checkpoint, run.info.run_id)
            logged_before = logger.preload() if reopen is not None else 0
            saving.append(EpochCheckpoint(checkpoint, run.info.run_id, logged=logged_before))
        trainer = instantiate(
            cfg.trainer,
            precision=precision,
            logger=logger,
            callbacks=[*callbacks, *saving],
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=runtime.progress_bar,
            num_sanity_val_steps=0,
            limit_val_batches=1.0 if len(splits.val_y) else 0,
        )
        start = time.perf_counter()
        _interruptible(trainer.fit, module, datamodule=datamodule, ckpt_path=resume_from)
        metrics = logged(trainer.callback_metrics, sizes)
        for key, points in logger.history.items():  # resumed after its last epoch: as logged
            metrics.setdefault(key, points[-1][1])
        seconds = saving[0].elapsed if saving else time.perf_counter() - start
        metrics["train_time_s"] = rounded("train_time_s", seconds)  # every attempt's epochs
        mlflow.log_metric("train_time_s", metrics["train_time_s"])
        confusion = None
        if cfg.test:
            _interruptible(trainer.test, module, datamodule=datamodule, verbose=False)
            metrics.update(logged(trainer.callback_metrics, sizes))
            if cfg.evaluate:
                confusion = evaluate.log_evaluation(
                    splits.test_x, splits.test_y, torch.cat(module.test_logits), splits.classes,
                    logger.history,
                )  # fmt: skip
        model_uri = None
        if cfg.log_model:
            example = splits.train_x[:2].float() / 255
            evaluated = module.evaluated  # the moving average of the weights, with `ema`
            model_uri = tracking.log_model(Predictor(evaluated, splits.mean, splits.std), example)
        result = RunResult(run.info.run_id, name, n_params, metrics, model_uri, confusion)
        if on_result is not None:
            on_result(result)
    return result


def resumable(training: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """`training(cfg, ...)` as a training that saves itself after every epoch and, run again
    after a kill, goes on from its last epoch in the same run (fmnist_lab/resume.py)."""

    def run(cfg: DictConfig, tags: dict[str, str] | None = None, **kwargs) -> RunResult:
        settings.check(cfg)  # before a lookup in the store
        with resume.claim(cfg) as found:
            return training(cfg, tags={**(tags or {}), resume.KEY_TAG: found.key},
                            checkpoint=found.checkpoint, reopen=found.run_id,
                            resume_from=found.resume_from, **kwargs)  # fmt: skip

    return run


def logged(metrics: dict[str, torch.Tensor], sizes: dict[str, int]) -> dict[str, float]:
    """Lightning's last epoch metrics as the run logged them (rounded; fmnist_lab.measures)."""
    return {k: rounded(k, float(v), sizes.get(split_of(k))) for k, v in metrics.items()}


def load_teacher(spec: DictConfig, classes: int, example: torch.Tensor) -> Teacher | None:
    """`distill.teacher`: the MLflow model of a trained run (`runs:/<id>/model`,
    `models:/<name>/<version>`, or its folder), checked on `example` before anything is
    recorded; None when no teacher is set."""
    if not spec.teacher:
        return None
    try:
        model = mlflow.pytorch.load_model(spec.teacher, map_location="cpu")
        with torch.no_grad():
            shape = tuple(model(example).shape)
    except Exception as err:  # MLflow, file and export errors alike: the URI is the problem
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"distill.teacher '{spec.teacher}' does not load as a model: {reason}"
        ) from None
    if shape != (len(example), classes):
        raise UserError(f"distill.teacher '{spec.teacher}' predicts {shape[1:]} outputs per "
                        f"image; this dataset has {classes} classes")  # fmt: skip
    return Teacher(model, float(spec.alpha), float(spec.temperature))


LR_RULES = {"none": lambda ratio: 1.0, "linear": lambda ratio: ratio, "sqrt": math.sqrt}


def scaled_lr(cfg: DictConfig) -> float:
    """optimizer.lr for data.batch_size, by `lr_scaling`: the linear rule keeps SGD's update
    per image constant as the batch grows (Goyal et al., 2017), the square-root rule suits
    Adam-type optimizers; `none` takes optimizer.lr as it is (checked: fmnist_lab/settings.py)."""
    rule, base = cfg.lr_scaling.rule, cfg.lr_scaling.base_batch_size
    return float(cfg.optimizer.lr) * LR_RULES[rule](cfg.data.batch_size / base)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of returning it.

    PyTorch's CPU tensors come from malloc. By default glibc maps a large block (over its mmap
    threshold, at most 32 MB) fresh from the kernel and unmaps it on free, so every training
    step faults its activations in again page by page: a third of the CPU time of a 20 M
    parameter CNN went to the kernel (docs/benchmarks.md). Kept, the heap is reused and the
    process's footprint stays at its peak. Threads other than the main one still get blocks
    over 64 MB from mmap (glibc's secondary arenas), and a preloaded jemalloc or tcmalloc
    ignores the setting. False where the C library has no mallopt (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    # No block is mmapped (so none is unmapped on free), and the heap's top is not trimmed
    # until 2 GB of it are free.
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto`: bf16 mixed precision on a CUDA GPU that has it, full fp32 anywhere else."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def _interruptible(step, *args, **kwargs) -> None:
    """Run a Trainer step, re-raising the Ctrl-C that Lightning turns into `sys.exit(1)`."""
    trainer = step.__self__
    try:
        step(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            # Lightning also ignores further Ctrl-C from here on; give it back to Python.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        raise


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_cleanly
def main(cfg: DictConfig) -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    try:
        result = resumable(train)(cfg)
    except FloatingPointError as err:  # the run is already recorded as FAILED, with the reason
        raise UserError(f"training diverged ({err}); try a lower optimizer.lr") from None
    shown = ", ".join(
        f"{k} {result.metrics[k]:.4f}" for k in ("val_acc", "test_acc") if k in result.metrics
    )
    print(
        f"run {result.run_id} ({result.name}, {result.params:,} params): {shown}\n"
        f"MLflow: {mlflow.get_tracking_uri()}  model: {result.model_uri}"
    )


if __name__ == "__main__":
    main()
