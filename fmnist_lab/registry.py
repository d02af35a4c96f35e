"""The MLflow model registry: one registered model per dataset, its alias on the champion.

A study registers its chosen finalist as a new version of `fmnist-<dataset>`; the alias
(`champion`) moves to that version only if its score beats the score of the version the alias
points at, and only if both were measured the same way (the same score, on the same split
after the same training). The score is validation accuracy unless the sweep asks, by name, to
choose on the test set.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

# What a champion can be chosen by, highest wins: the validation accuracy it was chosen by
# (honest), or the mean test accuracy of its seeds (selection on the test set, by name only).
SELECT_BY = {"val_acc": "validation", "test_acc_mean_on_test_set": "test"}


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    score: str  # what the champion is chosen by: a key of SELECT_BY
    moved: bool  # the alias now points at this version
    previous: tuple[str, float] | None  # (version, score) the alias pointed at before
    unlike: str | None = None  # why the two scores do not compare, if they do not

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
        if self.unlike:
            return (
                f"registered {where}; alias '{self.alias}' stays on version {old_version}: "
                f"{self.unlike}, so the two do not compare (give this study its own "
                f"registry.alias=, or move the alias by hand)"
            )
        return (
            f"registered {where}; alias '{self.alias}' stays on version {old_version}, "
            f"whose {self.score} {old:.4f} is at least as good"
        )


def check_select_by(select_by: str) -> str | None:
    """One sentence saying what is wrong with `select_by`, or None."""
    if select_by in SELECT_BY:
        return None
    if select_by == "test_acc_mean":
        return (
            "registry.select_by=test_acc_mean chose the champion on the test set; use val_acc "
            "(the default), or test_acc_mean_on_test_set to do so knowingly"
        )
    return f"registry.select_by={select_by} must be one of {', '.join(SELECT_BY)}"


def selection_tags(score: str, value: float, measure: str) -> dict[str, str]:
    """A version's tags saying what chose it: the score, its value, its split, its measure."""
    return {score: f"{value:.6f}", "selected_by": score, "selection_split": SELECT_BY[score],
            "selection_measure": measure}  # fmt: skip


def register_version(model_uri: str, name: str, tags: dict[str, str], alias: str,
                     score: str, description: str | None = None) -> ModelVersion:  # fmt: skip
    """A version of `name` for `model_uri` with `tags` and `description`: the one registered
    before for the same finalist run of the same study (`tags` `finalist_run`, `study_uid`) if
    there is one, so that a registration cut short and done again makes no second version."""
    client = MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name,
            description="Fashion-MNIST / MNIST classifiers from fmnist_lab studies; "
            f"alias '{alias}' marks the best by {score}.",
        )
    if "finalist_run" in tags and "study_uid" in tags:
        found = client.search_model_versions(
            f"name = '{name}' and tags.finalist_run = '{tags['finalist_run']}' "
            f"and tags.study_uid = '{tags['study_uid']}'"
        )
        if found:
            return found[0]
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow's own chatter; we say it once
        version = mlflow.register_model(model_uri, name, tags=tags)
    if description:
        version = client.update_model_version(name, version.version, description=description)
    return version


def decide_alias(version: ModelVersion, alias: str, score: str, value: float,
                 measure: str) -> Registration:  # fmt: skip
    """Move `alias` to `version` if the version it points at has a lower `score` measured
    the same way (`measure`); keep it where it is otherwise, saying why."""
    client = MlflowClient()
    name = version.name
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no version has the alias yet
        current = None
    previous, unlike = None, None
    already = current is not None and str(current.version) == str(version.version)
    if current is not None and not already:
        old_score = current.tags.get("selected_by", "test_acc_mean")  # before it was tagged
        old = float(current.tags.get(old_score, current.tags.get("test_acc_mean", "nan")))
        previous = (str(current.version), old)
        old_measure = current.tags.get("selection_measure")
        if old_score != score:
            unlike = f"it was chosen by {old_score}, this one by {score}"
        elif old_measure != measure:
            unlike = f"its {score} was measured as '{old_measure}', this one's as '{measure}'"
    moved = current is None or already or (unlike is None and value > previous[1])
    if moved and not already:
        client.set_registered_model_alias(name, alias, version.version)
    return Registration(name, str(version.version), alias, score, moved, previous, unlike)


def register_champion(model_uri: str, name: str, alias: str, tags: dict[str, str], score: str,
                      value: float, measure: str) -> Registration:  # fmt: skip
    """Register `model_uri` as a version of `name` chosen by `score` = `value` (a key of
    SELECT_BY), its `measure` saying how that score was measured; move `alias` to it if it
    is better than the version the alias points at, measured the same way."""
    if score not in SELECT_BY:
        raise ValueError(check_select_by(score))
    tags = {**tags, **selection_tags(score, value, measure)}
    version = register_version(model_uri, name, tags, alias, score)
    return decide_alias(version, alias, score, value, measure)
