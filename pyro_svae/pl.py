"""Plots. Each takes data (or a fitted model's tables) and an optional ``ax``, returns the ``Axes``,
and never runs inference beyond reading the fitted model."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["training", "targets"]


def _axes(ax, figsize=(5, 3.5)):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def training(model_or_history, ax=None):
    """Train and validation ELBO per epoch (from ``SVAE.history`` or the model itself)."""
    history = getattr(model_or_history, "history", model_or_history)
    ax = _axes(ax)
    ax.plot(history["epoch"], history["train_elbo"], label="train")
    if history["validation_elbo"].notna().any():
        ax.plot(history["epoch"], history["validation_elbo"], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per cell")
    ax.legend()
    return ax


def _cluster_order(values: np.ndarray) -> np.ndarray:
    if len(values) < 3:
        return np.arange(len(values))
    from scipy.cluster.hierarchy import leaves_list, linkage

    return leaves_list(linkage(values, method="average", metric="euclidean"))


def targets(model_or_table, ax=None, cluster: bool = True, cmap: str = "Blues"):
    """Heatmap of posterior inclusion probabilities, perturbations x latents.

    Rows are ordered by hierarchical clustering so that perturbations sharing targets form blocks.
    Accepts a fitted model (reads ``intervention_targets()``) or that table.
    """
    table = model_or_table if isinstance(model_or_table, pd.DataFrame) else model_or_table.intervention_targets()
    order = _cluster_order(table.to_numpy()) if cluster else np.arange(len(table))
    table = table.iloc[order]
    ax = _axes(ax, figsize=(0.4 * table.shape[1] + 2.5, 0.18 * table.shape[0] + 1.5))
    image = ax.imshow(table.to_numpy(), aspect="auto", vmin=0, vmax=1, cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), list(table.index), fontsize=max(4, min(9, 300 // max(1, len(table)))))
    ax.set_xlabel("latent")
    ax.set_ylabel("perturbation")
    ax.figure.colorbar(image, ax=ax, label="inclusion probability")
    return ax
