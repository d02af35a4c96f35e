"""`python -m fmnist_lab.predict IMAGE...`: classify your own photos with a logged model.

Each image is prepared as in `fmnist_lab.preprocess` (grayscale, light object on black,
cropped, centred, 28x28) and fed to the model; the top-3 classes are printed with their
probabilities. `--model` takes a registry reference (default
`models:/fmnist-fashion_mnist@champion`), a run id, any MLflow model URI, or a folder with an
`MLmodel` file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_lab.datasets import CLASSES
from fmnist_lab.errors import UserError, exit_cleanly
from fmnist_lab.options import add_data, add_tracking_uri

DEFAULT_MODEL = "models:/fmnist-fashion_mnist@champion"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class LoadedModel:
    """A loaded model, its class names and what is known about it."""

    model: Any  # mlflow.pyfunc.PyFuncModel
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, images: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (N x classes) for prepared 28x28 uint8 images."""
        from fmnist_lab import preprocess

        return np.asarray(self.model.predict(preprocess.to_tensor(images).numpy()))

    def top(self, probs: np.ndarray, k: int = 3) -> list[dict[str, Any]]:
        order = np.argsort(-probs)[:k]
        return [{"class": self.classes[i], "index": int(i), "probability": float(probs[i])}
                for i in order]  # fmt: skip


def model_uri(ref: str) -> str:
    """A run id -> its model; a folder -> itself; anything else is an MLflow model URI."""
    if RUN_ID.match(ref):
        return f"runs:/{ref}/model"
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser().resolve())
    return ref


def load_classifier(ref: str = DEFAULT_MODEL, dataset: str | None = None) -> LoadedModel:
    """Load the model `ref` names (see `model_uri`) with what the tracking store says of it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = model_uri(ref)
    if not re.match(r"^[a-z][a-z0-9+.-]*:", uri) and not Path(uri).is_dir():
        raise UserError(f"--model {ref}: not a folder, a run id or an MLflow model URI")
    if uri.startswith(("models:/", "runs:/")):
        from fmnist_lab.tracking import check_server

        check_server(mlflow.get_tracking_uri())
    info = describe(uri)
    with quiet(), without_lightning():
        try:
            model = mlflow.pyfunc.load_model(uri)
        except (MlflowException, OSError) as err:
            hint = ""
            if uri == DEFAULT_MODEL:
                hint = ("; a sweep registers its best finalist there "
                        "(python -m fmnist_lab.sweep), or pass --model")  # fmt: skip
            message = " ".join(str(getattr(err, "message", err)).split())[:300]
            raise UserError(f"no model at {uri} ({message}){hint}") from None
    name = dataset or info.get("dataset") or "fashion_mnist"
    if name not in CLASSES:
        raise UserError(f"dataset '{name}' is not one of {', '.join(CLASSES)}")
    info["dataset"] = name
    return LoadedModel(model, list(CLASSES[name]), info)


def summary(info: dict[str, Any]) -> str:
    """One line on the model that answers: name and version, size, its own test accuracy and,
    for a sweep's champion, its finalist's mean over seeds."""
    name = info.get("name", info["uri"])
    if "version" in info:
        name = f"{name} version {info['version']}"
    facts = []
    if "params" in info:
        facts.append(f"{info['params']:,} params")
    if "test_acc" in info:
        facts.append(f"test accuracy {info['test_acc']:.2%}")
    if "finalist_test_acc" in info:
        spread = info.get("finalist_test_acc_std", math.nan)
        spread = "" if math.isnan(spread) else f" +/- {spread:.2%}"
        seeds = f" over {info['finalist_seeds']} seeds" if info.get("finalist_seeds") else ""
        facts.append(f"its finalist {info['finalist_test_acc']:.2%}{spread}{seeds}")
    return name + (f" ({', '.join(facts)})" if facts else "")


def describe(uri: str) -> dict[str, Any]:
    """Name, version, parameters and test accuracy of the model at `uri`, where the tracking
    store knows them; an unknown model gets just its URI."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    info: dict[str, Any] = {"uri": uri}
    client = MlflowClient()
    run_id = None
    with contextlib.suppress(MlflowException, OSError):
        if uri.startswith("models:/"):
            name, _, rest = uri.removeprefix("models:/").partition("@")
            if rest:  # models:/name@alias
                version = client.get_model_version_by_alias(name, rest)
            else:  # models:/name/3
                name, _, number = name.partition("/")
                version = client.get_model_version(name, number)
            info.update(name=version.name, version=str(version.version), run_id=version.run_id)
            tags = version.tags
            if "params" in tags:
                info["params"] = int(tags["params"])
            # Its finalist's mean over seeds (tagged `test_acc_mean` by older versions); the
            # model's own test accuracy is its run's.
            finalist = tags.get("finalist_test_acc", tags.get("test_acc_mean"))
            if finalist is not None:
                info["finalist_test_acc"] = float(finalist)
                info["finalist_test_acc_std"] = float(
                    tags.get("finalist_test_acc_std", tags.get("test_acc_std", "nan"))
                )
                seeds = tags.get("finalist_seeds")
                info["finalist_seeds"] = int(seeds) if seeds else None
            run_id = version.run_id
        elif uri.startswith("runs:/"):
            run_id = uri.removeprefix("runs:/").split("/")[0]
            info["run_id"] = run_id
        if run_id:
            run = client.get_run(run_id)
            info.setdefault("name", run.info.run_name)
            info["dataset"] = run.data.tags.get("dataset")
            if "params" in run.data.metrics:
                info.setdefault("params", int(run.data.metrics["params"]))
            if "test_acc" in run.data.metrics:
                info.setdefault("test_acc", float(run.data.metrics["test_acc"]))
    return {k: v for k, v in info.items() if v is not None}


@contextlib.contextmanager
def quiet():
    """MLflow's progress bars and warnings while loading a model are noise here."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        yield


@contextlib.contextmanager
def without_lightning():
    """Load a model without Lightning: MLflow's pytorch flavor imports it (4 s here) only for
    its autologging, which it skips when the import fails; a None in sys.modules makes it
    fail. A process that has Lightning already (a training, the tests) keeps it."""
    if "pytorch_lightning" in sys.modules:
        yield
        return
    sys.modules["pytorch_lightning"] = None
    try:
        yield
    finally:
        if sys.modules.get("pytorch_lightning", 0) is None:
            del sys.modules["pytorch_lightning"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fmnist-lab predict",
        description="Classify images with a model logged by fmnist_lab.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, WebP, GIF, ...")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="registry reference, run id, model URI or folder "
                        f"(default {DEFAULT_MODEL})")  # fmt: skip
    add_tracking_uri(parser)
    add_data(parser, help="class names to use (default: the model's run says)")
    parser.add_argument("--top", type=int, default=3, help="classes per image (default 3)")
    parser.add_argument("--save-preprocessed", metavar="DIR", default=None,
                        help="write the 28x28 image fed to the model for each input")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    return parser.parse_args(argv)


@exit_cleanly
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import mlflow  # after parsing: --help answers without loading MLflow or torch

    from fmnist_lab import preprocess

    if args.top < 1:
        raise UserError(f"--top {args.top} must be at least 1")
    prepared = []
    for path in args.images:  # every image is checked before the model loads
        try:
            prepared.append(preprocess.prepare(preprocess.open_image(path)))
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    classifier = load_classifier(args.model, args.data)
    probs = classifier.predict(prepared)
    results = []
    for path, image, p in zip(args.images, prepared, probs, strict=True):
        entry = {"image": path, "top": classifier.top(p, args.top)}
        if args.save_preprocessed:
            out = Path(args.save_preprocessed)
            out.mkdir(parents=True, exist_ok=True)
            target = out / f"{Path(path).stem}_28x28.png"
            target.write_bytes(preprocess.to_png(image))
            entry["preprocessed"] = str(target)
        results.append(entry)
    if args.json:
        print(json.dumps({"model": classifier.info, "predictions": results}, indent=2))
        return
    print(f"model: {summary(classifier.info)}")
    for entry in results:
        best = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in entry["top"])
        print(f"{entry['image']}: {best}")


if __name__ == "__main__":
    main()
