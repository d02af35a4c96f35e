"""The evaluation's arithmetic on hand-made inputs: confusion matrix, per-class metrics,
the most confident mistakes, the learning-curve table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fmnist_lab.datasets import FASHION_CLASSES
from fmnist_lab.evaluate import (
    class_metric_names,
    class_metrics_for_mlflow,
    confident_mistakes,
    confusion_matrix,
    learning_curves,
    per_class_metrics,
    sample_predictions,
)


def test_confusion_matrix_rows_are_true_classes():
    y_true = torch.tensor([0, 0, 1, 2, 2, 2])
    y_pred = torch.tensor([0, 1, 1, 2, 0, 2])
    assert confusion_matrix(y_true, y_pred, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_metrics_by_hand():
    cm = np.array([[8, 2, 0], [1, 6, 3], [0, 0, 0]])  # class 2: never seen, never predicted
    table = per_class_metrics(cm, ["a", "b", "c"])
    assert table["precision"].tolist() == pytest.approx([8 / 9, 6 / 8, 0.0])
    assert table["recall"].tolist() == pytest.approx([0.8, 0.6, 0.0])
    assert table["miss_rate"].tolist() == pytest.approx([0.2, 0.4, 1.0])
    assert table["f1"][0] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
    assert table["support"].tolist() == [10, 10, 0]


def test_class_metric_names_sort_and_chart():
    names = class_metric_names(FASHION_CLASSES)
    assert names[0] == "0_tshirt_top" and names[6] == "6_shirt" and names[9] == "9_ankle_boot"
    assert class_metric_names([str(d) for d in range(3)]) == ["0_0", "1_1", "2_2"]
    table = per_class_metrics(np.eye(10, dtype=int) * 5, FASHION_CLASSES)
    metrics = class_metrics_for_mlflow(table)
    assert len(metrics) == 40 and metrics["test_recall/6_shirt"] == 1.0


def test_confident_mistakes_are_wrong_and_sorted():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.05, 0.95]])
    y = torch.tensor([1, 1, 0, 1, 0])
    table = confident_mistakes(probs, y, k=2)
    assert table["index"].tolist() == [4, 0]  # wrong at 0.95, then at 0.9
    assert table["predicted"].tolist() == [1, 0]
    assert table["probability"].tolist() == pytest.approx([0.95, 0.9])


def test_sample_predictions_are_fixed_by_seed():
    probs = torch.rand(50, 10).softmax(dim=1)
    y = torch.randint(0, 10, (50,))
    a, b = sample_predictions(probs, y, n=5), sample_predictions(probs, y, n=5)
    assert a == b and len(a) == 5
    assert all(p == sorted(p, reverse=True) for p in (s["probabilities"] for s in a))


def test_learning_curves_table():
    history = {"train_loss": [(0, 1.0), (1, 0.5)], "val_acc": [(0, 0.7), (1, 0.8)],
               "params": [(0, 123.0)]}  # fmt: skip
    table = learning_curves(history)
    assert list(table.columns) == ["epoch", "train_loss", "val_acc"]
    assert table["val_acc"].tolist() == [0.7, 0.8]
