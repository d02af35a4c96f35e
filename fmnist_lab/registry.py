"""The MLflow model registry: one registered model per dataset, its alias on the champion.

A study registers its best finalist as a new version of `fmnist-<dataset>`; the alias
(`champion`) moves to that version only if it beats the version the alias points at.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

SCORES = ("test_acc_mean", "val_acc")  # what "better" can mean, highest wins


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    score: str  # the tag compared: test_acc_mean or val_acc
    moved: bool  # the alias now points at this version
    previous: tuple[str, float] | None  # (version, score) the alias pointed at before

    def describe(self) -> str:
        where = f"{self.name} version {self.version}"
        if self.previous is None:
            return f"registered {where}; alias '{self.alias}' set"
        old_version, old = self.previous
        if self.moved:
            return (
                f"registered {where}; alias '{self.alias}' moved from version "
                f"{old_version} ({self.score} {old:.4f})"
            )
        return (
            f"registered {where}; alias '{self.alias}' stays on version {old_version}, "
            f"whose {self.score} {old:.4f} is at least as good"
        )


def register_champion(
    model_uri: str, name: str, alias: str, tags: dict[str, str], score: str, value: float
) -> Registration:
    """Register `model_uri` as a new version of `name`; move `alias` to it if it is better:
    a higher `score` tag (test_acc_mean or val_acc) than the version the alias points at."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, not '{score}'")
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description="Fashion-MNIST / MNIST classifiers from fmnist_lab studies; "
            f"alias '{alias}' marks the best by {score}.",
        )
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow's own chatter; we say it once
        version = mlflow.register_model(
            model_uri, name, tags={**tags, score: f"{value:.6f}", "selected_by": score}
        ).version
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no version has the alias yet
        current = None
    previous = None
    if current is not None:
        previous = (str(current.version), float(current.tags.get(score, "-inf")))
    moved = previous is None or value > previous[1]
    if moved:
        client.set_registered_model_alias(name, alias, version)
    return Registration(name, str(version), alias, score, moved, previous)
