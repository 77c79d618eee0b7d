"""Shared pieces of the plots: axes on demand, clustering order, which latents carry anything."""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import pandas as pd

__all__ = ["axes_or_new", "cluster_order", "active_latents", "tick_fontsize", "HORIZONTAL_VIOLINS"]

#: ``violinplot`` keywords for horizontal violins: ``orientation`` from Matplotlib 3.10, where ``vert``
#: is deprecated; ``vert=False`` before it
HORIZONTAL_VIOLINS = ({"orientation": "horizontal"}
                      if tuple(int(part) for part in version("matplotlib").split(".")[:2]) >= (3, 10)
                      else {"vert": False})


def axes_or_new(ax, figsize=(5, 3.5)):
    """``ax``, or the Axes of a new figure of ``figsize``."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def cluster_order(values: np.ndarray) -> np.ndarray:
    """Row order of hierarchical clustering (average linkage): similar rows end up adjacent."""
    if len(values) < 3:
        return np.arange(len(values))
    from scipy.cluster.hierarchy import leaves_list, linkage

    return leaves_list(linkage(values, method="average", metric="euclidean"))


def active_latents(table: pd.DataFrame, threshold: float) -> list:
    """Columns of ``table`` with some entry above ``threshold`` in absolute value."""
    return [c for c in table.columns if (table[c].abs() > threshold).any()]


def tick_fontsize(n: int, base: int = 300) -> float:
    """A label size that keeps ``n`` tick labels apart (between 4 and 9 points)."""
    return max(4, min(9, base // max(1, n)))
