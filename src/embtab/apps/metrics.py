"""Metrics of the applications, in torch (no scikit-learn at run time)."""

from __future__ import annotations

import torch
from torch import Tensor


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int) -> Tensor:
    """``(C, C)`` counts, rows the true class, columns the predicted one."""
    idx = y_true.to(torch.int64) * num_classes + y_pred.to(torch.int64)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(y_true: Tensor, y_pred: Tensor, num_classes: int) -> dict[str, float | list[float]]:
    """Accuracy, macro-F1 and per-class F1.

    F1 of a class with no true and no predicted example is 0 (scikit-learn's
    ``zero_division=0``), so a model that never predicts a class pays for it.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes).to(torch.float64)
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))
    n = max(int(y_true.numel()), 1)
    return {
        "accuracy": float(tp.sum()) / n,
        "macro_f1": float(f1.mean()),
        "f1_per_class": [float(v) for v in f1],
    }


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, float]:
    """RMSE and MAE (computed in float64)."""
    err = pred.to(torch.float64) - target.to(torch.float64)
    return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}
