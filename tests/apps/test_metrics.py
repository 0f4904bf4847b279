"""The apps' metrics against scikit-learn's (a test-only dependency)."""

from __future__ import annotations

import math

import pytest
import torch

from embtab.apps.metrics import classification_metrics, confusion_matrix, regression_metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (200,), generator=g)
    p = torch.where(torch.rand(200, generator=g) < 0.6, y, torch.randint(0, 4, (200,), generator=g))
    if seed == 0:
        p[p == 3] = 0  # a class never predicted: its F1 is 0
    m = classification_metrics(y, p, 4)
    assert m["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(y, p, average="macro", zero_division=0))
    assert m["f1_per_class"] == pytest.approx(list(sklearn_metrics.f1_score(y, p, average=None, zero_division=0)))
    assert confusion_matrix(y, p, 4).tolist() == sklearn_metrics.confusion_matrix(y, p, labels=range(4)).tolist()


def test_regression():
    pred, target = torch.tensor([3.0, 4.0, 1.0]), torch.tensor([3.5, 4.0, 2.0])
    m = regression_metrics(pred, target)
    assert m["rmse"] == pytest.approx(math.sqrt((0.25 + 1.0) / 3))
    assert m["mae"] == pytest.approx(0.5)
