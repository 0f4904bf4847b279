"""Pictures of a run: training and validation curves, and a 2-D map of learned embeddings.

matplotlib runs on its file-only ``Agg`` backend (no display needed); every PNG is
written atomically.
"""

from __future__ import annotations

import io
import os
from typing import Any, Sequence

import torch
from torch import Tensor

from .._io import atomic_write_bytes
from .common import AppError, require


def missing() -> str | None:
    """Why no plot can be drawn (matplotlib cannot be imported), or ``None``.

    The applications ask before they train, so that a run without matplotlib warns at
    its start and still writes its metrics, instead of failing after the training.
    """
    try:
        _pyplot()
    except (AppError, ImportError) as exc:
        cause = exc.__cause__ if isinstance(exc, AppError) and exc.__cause__ is not None else exc
        return f"matplotlib cannot be imported ({cause}); install it with pip install 'embtab[apps]'"
    return None


def _pyplot() -> Any:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike[str]) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(
    history: Sequence[dict[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str,
    val_key: str,
    val_label: str,
    baselines: dict[str, float] | None = None,
    best_epoch: int | None = None,
) -> None:
    """Training loss and a validation metric per epoch, baselines as dashed lines."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    ax1.set_title("training")
    ax2.plot(epochs, [h[val_key] for h in history], marker="o", ms=3, label="model")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax2.axhline(value, ls="--", lw=1, color=f"C{i + 1}", label=name)
    if best_epoch:
        ax2.axvline(best_epoch, ls=":", color="grey", lw=1, label=f"best (epoch {best_epoch})")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(val_label)
    ax2.set_title("validation")
    ax2.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def pca_2d(x: Tensor) -> Tensor:
    """The first two principal components of the rows of ``x``: ``(N, D) -> (N, 2)``."""
    x = x.detach().to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    # SVD of the centred data: deterministic, exact, cheap for a few thousand rows.
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    out = x @ vh[:2].T
    # Fix each component's sign (SVD's is arbitrary) so the picture is stable across runs.
    signs = torch.sign(out[out.abs().argmax(0), torch.arange(out.shape[1])])
    return (out * signs).to(torch.float32)


def plot_embedding_map(
    vectors: Tensor,
    labels: Sequence[str | None],
    path: str | os.PathLike[str],
    *,
    title: str,
    colors: Sequence[float] | None = None,
    color_label: str | None = None,
    groups: Sequence[str] | None = None,
) -> None:
    """A scatter of the 2-D PCA of ``vectors`` (N, D); points with a label are annotated.

    Colour the points by a number (``colors``, with a colour bar titled ``color_label``)
    or by a category (``groups``, with a legend).
    """
    plt = _pyplot()
    xy = pca_2d(vectors).numpy()
    fig, ax = plt.subplots(figsize=(8, 6.5))
    if groups is not None:
        for i, name in enumerate(dict.fromkeys(groups)):
            mask = [g == name for g in groups]
            ax.scatter(xy[mask, 0], xy[mask, 1], s=9, alpha=0.6, color=f"C{i}", linewidths=0, label=name)
        ax.legend(fontsize=8, markerscale=2)
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], s=8, alpha=0.55, c=colors if colors is not None else "C0",
                        cmap="viridis" if colors is not None else None, linewidths=0)
        if colors is not None:
            cb = fig.colorbar(sc, ax=ax)
            if color_label:
                cb.set_label(color_label)
    for (x, y), label in zip(xy, labels):
        if label:
            label = label if len(label) <= 32 else label[:30] + "..."
            ax.scatter([x], [y], s=20, facecolors="none", edgecolors="black", linewidths=0.8)
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)
