"""What a tested model got right and wrong: confusion matrix, per-class metrics, and the plots
(learning curves, most confident mistakes, sample predictions) logged with its MLflow run.

Every figure is logged as a PNG together with the data behind it (CSV or JSON), so a plot can
be redrawn or checked without the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from fmnist_lab.measures import rounded  # noqa: E402

DPI = 100
N_MISTAKES = 25  # as the R1 reference showed them
N_SAMPLES = 20  # sample test predictions with their top-3 probabilities (R2's view)
CURVES = ("train_loss", "val_loss", "train_acc", "val_acc")


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    flat = y_true.long() * n_classes + y_pred.long()
    return torch.bincount(flat.cpu(), minlength=n_classes**2).reshape(n_classes, -1).numpy()


def per_class_metrics(cm: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1, miss rate (1 - recall) and support of each class."""
    hits = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return pd.DataFrame(
        {
            "class": list(classes),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "miss_rate": 1 - recall,
            "support": support,
        },
    )


def class_metric_names(classes: Sequence[str]) -> list[str]:
    """'T-shirt/top' -> '0_tshirt_top': the per-class part of metric names, in class order.

    The MLflow UI groups metrics named `section/name` into one section per prefix, so the
    40 per-class metrics (`test_recall/6_shirt`, ...) stay out of the main charts.
    """
    return [
        f"{i}_{re.sub(r'[^a-z0-9]+', '_', c.lower().replace('-', ''))}".rstrip("_")
        for i, c in enumerate(classes)
    ]


def class_metrics_for_mlflow(table: pd.DataFrame) -> dict[str, float]:
    names = class_metric_names(table["class"])
    return {
        f"test_{kind}/{name}": rounded(kind, float(value))
        for kind in ("precision", "recall", "f1", "miss_rate")
        for name, value in zip(names, table[kind], strict=True)
    }


# --- figures ----------------------------------------------------------------------------


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str = "") -> plt.Figure:
    """Counts on the left, row-normalised (recall on the diagonal) on the right."""
    fig, axes = plt.subplots(1, 2, figsize=(16, 7), dpi=DPI)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    for ax, data, name, fmt in (
        (axes[0], cm, "counts", "{:.0f}"),
        (axes[1], rows, "row-normalised", "{:.2f}"),
    ):
        ax.imshow(data, cmap="Blues")
        ax.set_title(f"{title} confusion matrix ({name})".strip())
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        high = data.max() / 2
        for i in range(len(classes)):
            for j in range(len(classes)):
                colour = "white" if data[i, j] > high else "black"
                ax.text(
                    j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=7, color=colour
                )
    fig.tight_layout()
    return fig


def _image_grid(n: int, cols: int, cell: tuple[float, float]) -> tuple[plt.Figure, np.ndarray]:
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell[0], rows * cell[1]), dpi=DPI)
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    return fig, axes


def confident_mistakes(probs: torch.Tensor, y: torch.Tensor, k: int = N_MISTAKES) -> pd.DataFrame:
    """The `k` wrong predictions made with the highest probability, most confident first."""
    conf, pred = probs.max(dim=1)
    wrong = (pred != y).nonzero().squeeze(1)
    order = wrong[conf[wrong].argsort(descending=True, stable=True)][:k]
    return pd.DataFrame(
        {
            "index": order.tolist(),
            "true": y[order].tolist(),
            "predicted": pred[order].tolist(),
            "probability": conf[order].tolist(),
        },
    )


def plot_mistakes(x: torch.Tensor, table: pd.DataFrame, classes: Sequence[str]) -> plt.Figure:
    fig, axes = _image_grid(max(len(table), 1), 5, (2.4, 2.7))
    for ax, row in zip(axes, table.itertuples(), strict=False):
        ax.imshow(x[row.index].squeeze(0).cpu().numpy(), cmap="gray_r", vmin=0, vmax=255)
        ax.set_title(
            f"true: {classes[row.true]}\npred: {classes[row.predicted]} ({row.probability:.2f})",
            fontsize=8,
        )
    fig.suptitle(f"The {len(table)} most confident wrong test predictions")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def sample_predictions(
    probs: torch.Tensor, y: torch.Tensor, n: int = N_SAMPLES, seed: int = 0
) -> list[dict]:
    """`n` test images picked at random (fixed seed) with their top-3 classes and probabilities."""
    picks = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
    top = probs[picks].topk(min(3, probs.shape[1]), dim=1)
    return [
        {
            "index": int(i),
            "true": int(y[i]),
            "top3": top.indices[r].tolist(),
            "probabilities": [round(p, 4) for p in top.values[r].tolist()],
        }
        for r, i in enumerate(picks)
    ]


def plot_samples(x: torch.Tensor, samples: list[dict], classes: Sequence[str]) -> plt.Figure:
    fig, axes = _image_grid(max(len(samples), 1), 5, (2.6, 3.6))
    for ax, s in zip(axes, samples, strict=False):
        ax.imshow(x[s["index"]].squeeze(0).cpu().numpy(), cmap="gray_r", vmin=0, vmax=255)
        right = s["top3"][0] == s["true"]
        lines = [
            f"{classes[c]} {p:.2f}" for c, p in zip(s["top3"], s["probabilities"], strict=True)
        ]
        ax.set_title(
            f"true: {classes[s['true']]}\n" + "\n".join(lines),
            fontsize=8,
            color="darkgreen" if right else "firebrick",
        )
    fig.suptitle("Sample test predictions: top-3 classes and probabilities")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def learning_curves(history: Mapping[str, Sequence[tuple[int, float]]]) -> pd.DataFrame:
    """Per-epoch train/validation loss and accuracy, one row per epoch."""
    frames = [pd.Series(dict(points), name=k) for k, points in history.items() if k in CURVES]
    if not frames:
        return pd.DataFrame(columns=["epoch", *CURVES])
    table = pd.concat(frames, axis=1).sort_index()
    table = table.reindex(columns=[c for c in CURVES if c in table])
    return table.rename_axis("epoch").reset_index()


def plot_curves(table: pd.DataFrame) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=DPI)
    for ax, kind in zip(axes, ("loss", "acc"), strict=True):
        for stage, style in (("train", "o-"), ("val", "s--")):
            column = f"{stage}_{kind}"
            if column in table:
                ax.plot(table["epoch"] + 1, table[column], style, label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if kind == "acc" else "cross-entropy loss")
        ax.set_title(f"{'accuracy' if kind == 'acc' else 'loss'} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


# --- logging ----------------------------------------------------------------------------


def log_figure(fig: plt.Figure, path: str) -> None:
    """Log `fig` as a PNG artifact at `path` (its own size and dpi) and close it."""
    try:
        mlflow.log_figure(fig, path)
    finally:
        plt.close(fig)


def log_confusion(cm: np.ndarray, classes: Sequence[str], title: str = "") -> pd.DataFrame:
    """Log the confusion matrix (PNG + CSV) and the per-class metrics (CSV + metrics)."""
    mlflow.log_text(
        pd.DataFrame(cm, index=classes, columns=classes).to_csv(), "evaluation/confusion_matrix.csv"
    )
    log_figure(plot_confusion(cm, classes, title), "evaluation/confusion_matrix.png")
    table = per_class_metrics(cm, classes)
    mlflow.log_text(table.to_csv(index=False), "evaluation/per_class.csv")
    mlflow.log_metrics(class_metrics_for_mlflow(table))
    return table


def log_evaluation(
    x: torch.Tensor,
    y: torch.Tensor,
    logits: torch.Tensor,
    classes: Sequence[str],
    history: Mapping[str, Sequence[tuple[int, float]]],
) -> np.ndarray:
    """Log every evaluation artifact of a tested run; returns the confusion matrix."""
    probs = logits.float().softmax(dim=1).cpu()
    y = y.cpu()
    cm = confusion_matrix(y, probs.argmax(dim=1), len(classes))
    log_confusion(cm, classes)

    mistakes = confident_mistakes(probs, y)
    mlflow.log_text(
        mistakes.assign(
            true_class=[classes[i] for i in mistakes["true"]],
            predicted_class=[classes[i] for i in mistakes["predicted"]],
        ).to_csv(index=False),
        "evaluation/confident_mistakes.csv",
    )
    log_figure(plot_mistakes(x, mistakes, classes), "evaluation/confident_mistakes.png")

    samples = sample_predictions(probs, y)
    mlflow.log_dict(
        [
            s | {"true_class": classes[s["true"]], "top3_classes": [classes[c] for c in s["top3"]]}
            for s in samples
        ],
        "evaluation/sample_predictions.json",
    )
    log_figure(plot_samples(x, samples, classes), "evaluation/sample_predictions.png")

    curves = learning_curves(history)
    mlflow.log_text(curves.to_csv(index=False), "evaluation/learning_curves.csv")
    log_figure(plot_curves(curves), "evaluation/learning_curves.png")
    return cm
