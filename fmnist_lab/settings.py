"""What a user may type: the schema of every setting `train`, `cv`, `sweep`, `reproduce` and
`tta` take, checked once, before anything is recorded (docs/training.md#errors).

The composed config is validated against pydantic models that mirror conf/: a value outside
its range, of the wrong type, or a misspelt key in a sweep file's own block ends in one
sentence naming the key, the value and what is allowed. Keys a group's `_target_` takes that
are not listed here pass through to it (the class checks them)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from fmnist_lab.errors import UserError
from fmnist_lab.registry import check_select_by


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Real = Annotated[float, Field(strict=True), AfterValidator(_finite)]  # true is not 1.0
Count = Annotated[StrictInt, Field(ge=1)]  # a whole number of at least 1
Fraction = Annotated[Real, Field(gt=0, le=1)]  # (0, 1]
Probability = Annotated[Real, Field(ge=0, le=1)]  # [0, 1]
TRAINING_IMAGES = {"fashion_mnist": 60_000, "mnist": 60_000, "fashion_mnist_csv": 60_000}


class Group(BaseModel):
    """A config group: its listed keys are checked, the others go to its `_target_`."""

    model_config = ConfigDict(extra="allow")


class Optimizer(Group):
    lr: Annotated[Real, Field(gt=0)]
    weight_decay: Annotated[Real, Field(ge=0)] = 0.0
    momentum: Annotated[Real, Field(ge=0, lt=1)] = 0.0


class Data(Group):
    name: str
    val_size: Annotated[StrictInt, Field(ge=0)]
    split_seed: Annotated[StrictInt, Field(ge=0)]
    train_fraction: Fraction
    batch_size: Count
    eval_batch_size: Count

    @model_validator(mode="after")
    def _fits(self) -> Data:
        known = TRAINING_IMAGES.get(self.name)
        if known is not None and self.val_size >= known:
            raise ValueError(
                f"data.val_size={self.val_size} must leave training images: {self.name} has "
                f"{known:,}, so at most {known - 1:,}"
            )
        return self


class Trainer(Group):
    max_epochs: Count
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"]
    devices: Count | Literal["auto"]


class Runtime(Group):
    threads: Count | None = None
    channels_last: StrictBool
    compile: StrictBool
    progress_bar: StrictBool
    keep_freed_memory: StrictBool
    checkpoints: StrictStr | None = None


class Scheduler(Group):
    pct_start: Annotated[Real, Field(gt=0, lt=1)] = 0.25
    warmup: Annotated[Real, Field(ge=0, lt=1)] = 0.05
    decay: Annotated[Real, Field(gt=0, le=1)] = 0.2


class Augmentation(Group):
    flip: StrictBool = False
    crop_padding: Annotated[StrictInt, Field(ge=0, le=14)] = 0
    erasing_p: Probability = 0.0


class Distill(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: str | None
    alpha: Probability
    temperature: Annotated[Real, Field(gt=0)]


class LrScaling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: Literal["none", "linear", "sqrt"]
    base_batch_size: Count


class Ema(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decay: Annotated[Real, Field(gt=0, lt=1)] | None = None


class Training(Group):
    """conf/train.yaml and what a run composes from it."""

    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)]
    test: StrictBool
    evaluate: StrictBool
    log_model: StrictBool
    label_smoothing: Annotated[Real, Field(ge=0, lt=1)]
    ema: Ema = Ema()
    bn_lr_scale: Annotated[Real, Field(gt=0)] = 1.0
    optimizer: Optimizer
    data: Data
    trainer: Trainer
    runtime: Runtime
    scheduler: Scheduler | None = None
    augmentation: Augmentation
    distill: Distill
    lr_scaling: LrScaling


class CrossValidation(Training):
    folds: Annotated[StrictInt, Field(ge=2)]


class Strict(BaseModel):
    """A block of a sweep file: a key it does not know is a typo."""

    model_config = ConfigDict(extra="forbid")


class Objective(Strict):
    metric: Literal["val_acc", "val_loss", "params"]
    direction: Literal["maximize", "minimize"]


class Constraints(Strict):
    max_params: Count | None = None
    min_val_acc: Probability | None = None


class Budget(Strict):
    n_trials: Count
    timeout_s: Annotated[Real, Field(gt=0)] | None = None
    epochs: Count
    train_fraction: Fraction
    compute_epochs: Count | None = None  # epochs trained in all (fmnist_lab.sweep.fidelity)


class Finalists(Strict):
    select: Literal["pareto", "top_k", "budgets"]
    budgets: list[Count] | None = None
    top_k: Count
    seeds: Annotated[StrictInt, Field(ge=0)]
    epochs: Count
    target_acc: Probability
    rerank: Annotated[StrictInt, Field(ge=0)] = 0
    rerank_epochs: Count | None = None
    overrides: list[str] = []
    rerank_overrides: list[str] = []

    @model_validator(mode="after")
    def _rule(self) -> Finalists:
        if self.select == "budgets" and not self.budgets:
            raise ValueError("sweep.finalists.select=budgets needs finalists.budgets: a list of "
                             "parameter counts")  # fmt: skip
        if self.rerank and self.select != "budgets":
            raise ValueError(f"sweep.finalists.rerank={self.rerank} needs finalists.select="
                             f"budgets (or rerank=0 with select={self.select})")  # fmt: skip
        return self


class Fidelity(Strict):
    """`sweep.fidelity`: the multi-fidelity scheduler (fmnist_lab/sweep/fidelity.py)."""

    min_epochs: Count
    max_epochs: Count
    eta: StrictInt
    decay: Annotated[Real, Field(gt=0, lt=1)] = 0.2
    warmup_epochs: Annotated[Real, Field(ge=0)] = 0.5
    # budgets: the search-efficiency benchmark's better rule (docs/benchmarks.md)
    rule: Literal["nondominated", "budgets", "targets"] = "budgets"

    @model_validator(mode="after")
    def _rungs(self) -> Fidelity:
        if self.eta < 2:
            raise ValueError(f"sweep.fidelity.eta={self.eta} must be at least 2: each rung "
                             f"keeps 1/eta of the trials below it")  # fmt: skip
        if self.min_epochs > self.max_epochs:
            raise ValueError(f"sweep.fidelity.min_epochs={self.min_epochs} must be at most "
                             f"max_epochs={self.max_epochs}")  # fmt: skip
        return self


class Stop(Strict):
    val_acc: Probability | None = None
    max_params: Count | None = None


class SweepFile(Strict):
    """The `sweep:` block of a sweep file (sweeps/*.yaml) with conf/sweep.yaml's part of it."""

    name: str
    objectives: Annotated[list[Objective], Field(min_length=1)]
    constraints: Constraints
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    budget: Budget
    space: dict[str, Any]
    finalists: Finalists
    stop: Stop
    log_models: StrictBool
    warm_start: list[Any] = []
    fidelity: Fidelity | None = None

    @model_validator(mode="after")
    def _fidelity(self) -> SweepFile:
        f = self.fidelity
        if f is None:
            return self
        if f.max_epochs > self.finalists.epochs:
            raise ValueError(f"sweep.fidelity.max_epochs={f.max_epochs} must be at most "
                             f"finalists.epochs={self.finalists.epochs}: finalists are chosen "
                             f"at the top rung and trained for that length")  # fmt: skip
        if f.rule == "targets" and self.finalists.select != "budgets":
            raise ValueError("sweep.fidelity.rule=targets promotes toward finalists.budgets: "
                             f"it needs finalists.select=budgets, not "
                             f"{self.finalists.select}")  # fmt: skip
        if self.finalists.rerank:
            raise ValueError(f"sweep.finalists.rerank={self.finalists.rerank} must be 0 with "
                             "sweep.fidelity: its top rung ranks at full length")  # fmt: skip
        if "val_acc" not in [o.metric for o in self.objectives]:
            raise ValueError("sweep.fidelity promotes by validation accuracy: sweep.objectives "
                             "must include val_acc")  # fmt: skip
        if not str(self.pruner.get("_target_", "")).endswith("NopPruner"):
            raise ValueError("sweep.fidelity decides which trials train on: it takes no "
                             "pruner (sweep/pruner=none)")  # fmt: skip
        return self


class Heartbeat(Strict):
    interval_s: Annotated[Real, Field(gt=0)]
    grace_s: Annotated[Real, Field(gt=0)]

    @model_validator(mode="after")
    def _order(self) -> Heartbeat:
        if self.interval_s >= self.grace_s:
            raise ValueError(f"heartbeat.interval_s={self.interval_s:g} must be below "
                             f"heartbeat.grace_s={self.grace_s:g}")  # fmt: skip
        return self


class Registry(Strict):
    enabled: StrictBool
    name: str
    alias: Annotated[str, Field(min_length=1)]
    max_params: Count | None = None
    select_by: str

    @model_validator(mode="after")
    def _honest(self) -> Registry:
        wrong = check_select_by(self.select_by)
        if wrong:
            raise ValueError(wrong)
        return self


class Sweep(Training):
    """conf/sweep.yaml with its sweep file."""

    sweep: SweepFile
    study_name: Annotated[str, Field(min_length=1)]
    workers: Count
    enqueue_references: StrictBool
    heartbeat: Heartbeat
    registry: Registry

    @model_validator(mode="after")
    def _validates(self) -> Sweep:
        if self.data.val_size < 1:
            raise ValueError("data.val_size=0: a sweep selects on the validation split, so it "
                             "must be at least 1")  # fmt: skip
        return self


def check(cfg: DictConfig, schema: type[BaseModel] = Training) -> None:
    """Refuse a config with a setting out of range, of the wrong type or misspelt, in one
    sentence; `schema`: Training (train, reproduce, tta), CrossValidation or Sweep."""
    container = OmegaConf.to_container(cfg, resolve=True)
    try:
        schema.model_validate(container)
    except ValidationError as err:
        raise UserError(sentence(err.errors()[0], container)) from None


def sentence(error: dict[str, Any], container: dict[str, Any]) -> str:
    """One pydantic error as `key=value must be ...`."""
    path = _path(error["loc"])
    key = ".".join(path)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{key} is missing; add it to the config or the sweep file"
    if error["type"] == "extra_forbidden":
        parent = key.rpartition(".")[0]
        return f"{key} is not a setting of {parent or 'the config'} (misspelt?)"
    if error["type"] == "value_error" and "=" in message:
        return message  # a check of its own, already one sentence
    value = _value(container, path)
    message = re.sub(r"^\w+ should", "must", message).replace(" after validation", "")
    return f"{key}={_show(value)}: {message}"


def _path(loc: tuple) -> list[str]:
    """The config path of a pydantic location, without the union members it tried."""
    known = ("int", "str", "float", "bool", "none")
    return [str(p) for p in loc
            if not (isinstance(p, str) and (p.startswith(("literal[", "function-", "constrained"))
                                            or p in known))]  # fmt: skip


def _value(container: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(container, dict) and part in container:
            container = container[part]
        elif isinstance(container, list) and part.isdigit() and int(part) < len(container):
            container = container[int(part)]
        else:
            return None
    return container


def _show(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str) and (not value.isprintable() or value.strip() != value or not value):
        return repr(value)  # a newline or blank as the user would not otherwise see it
    return " ".join(str(value).split())
