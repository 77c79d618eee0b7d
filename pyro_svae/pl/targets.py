"""Heatmaps of the perturbations' targets: inclusion probabilities and signed shifts."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from ._common import active_latents, axes_or_new, cluster_order, tick_fontsize

__all__ = ["targets", "shifts"]


def _prepare(table: pd.DataFrame, keep: list, cluster: bool, order_by: Optional[pd.DataFrame] = None):
    table = table[keep]
    basis = table if order_by is None else order_by.loc[table.index, keep]
    order = cluster_order(basis.to_numpy()) if cluster else np.arange(len(table))
    return table.iloc[order]


def _heatmap(ax, table: pd.DataFrame, hidden: int, cmap, vmin, vmax, label: str):
    image = ax.imshow(table.to_numpy(), aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(table.shape[0]), list(table.index), fontsize=tick_fontsize(len(table)))
    ax.set_xlabel("latent" + (f" ({hidden} without targets hidden)" if hidden else ""))
    ax.set_ylabel("perturbation")
    ax.figure.colorbar(image, ax=ax, label=label)
    return image


def _overlay(ax, table: pd.DataFrame, marks: Optional[pd.DataFrame], label: str, **style):
    if marks is None:
        return
    marks = marks.reindex(index=table.index, columns=table.columns, fill_value=False).astype(bool)
    rows, cols = np.nonzero(marks.to_numpy())
    ax.scatter(cols, rows, label=label, **{"s": 12, "c": "k", "marker": "o", **style})
    _legend_below(ax)


def _legend_below(ax) -> None:
    """The legend under the x axis' ticks and label (inside the axes it would cover cells of the heatmap),
    right-aligned, and anchored to the axes so that it follows them through ``tight_layout``."""
    from matplotlib.transforms import offset_copy

    depth = 28.0  # points from the axes to below the axis label, measured where the canvas can lay text out
    get_renderer = getattr(ax.figure.canvas, "get_renderer", None)
    if get_renderer is not None:
        renderer = get_renderer()
        depth = (ax.get_window_extent(renderer).y0 - ax.xaxis.get_tightbbox(renderer).y0) * 72.0 / ax.figure.dpi + 2.0
    below = offset_copy(ax.transAxes, fig=ax.figure, y=-depth, units="points")
    ax.legend(loc="upper right", bbox_to_anchor=(1.0, 0.0), bbox_transform=below, borderaxespad=0.0, fontsize=7,
              frameon=False)


def _shown_latents(table: pd.DataFrame, threshold: float, hide_inactive: bool,
                   marks: Optional[pd.DataFrame] = None) -> list:
    """The latents to draw: all, or (``hide_inactive``) those with an entry above ``threshold`` in
    size or a marked entry (a true or called target); at least one."""
    keep = active_latents(table, threshold) if hide_inactive else list(table.columns)
    if marks is not None and hide_inactive:
        keep = [c for c in table.columns if c in keep or marks[c].any()]
    return keep or list(table.columns[:1])


def _as_frame(marks, like: pd.DataFrame) -> Optional[pd.DataFrame]:
    if marks is None or isinstance(marks, pd.DataFrame):
        return marks
    marks = np.asarray(marks, bool)
    if marks.shape != like.shape:
        raise ValueError(f"Expected truth of shape {like.shape} (perturbations x latents), but got {marks.shape}.")
    return pd.DataFrame(marks, index=like.index, columns=like.columns)


def targets(model_or_table, ax=None, cluster: bool = True, cmap: str = "Blues", hide_inactive: bool = True,
            signed: bool = False, truth=None, threshold: float = 0.5):
    """Heatmap of posterior inclusion probabilities, perturbations x latents.

    Rows are clustered so that perturbations sharing targets form blocks; latents where no
    probability exceeds ``threshold`` are hidden (``hide_inactive``, the count is in the label).
    ``signed=True`` (needs the model) colours each probability by the sign of the shift, so that
    up and down targets of one latent are told apart. ``truth`` (a boolean table or array
    ``[P, K]`` in the model's latent order, e.g. the simulator's true targets matched to the
    learned latents) is overlaid as dots. Returns the ``Axes``.
    """
    table = model_or_table if isinstance(model_or_table, pd.DataFrame) else model_or_table.intervention_targets()
    truth = _as_frame(truth, table)
    keep = _shown_latents(table, threshold, hide_inactive, truth)
    values = table
    if signed:
        if isinstance(model_or_table, pd.DataFrame):
            raise ValueError("signed=True needs the fitted model (to read the shifts), not a table.")
        values = table * np.sign(model_or_table.shifts())
    shown = _prepare(values, keep, cluster, order_by=table)
    ax = axes_or_new(ax, figsize=(0.45 * len(keep) + 3.0, 0.18 * len(shown) + 1.6))
    if signed:
        _heatmap(ax, shown, len(table.columns) - len(keep), "RdBu_r", -1, 1, "inclusion probability x sign of shift")
    else:
        _heatmap(ax, shown, len(table.columns) - len(keep), cmap, 0, 1, "inclusion probability")
    _overlay(ax, shown, truth, "true target", facecolors="none", edgecolors="C3", linewidths=1.2, c=None, s=30)
    return ax


def shifts(model_or_table, ax=None, inclusion: Optional[pd.DataFrame] = None, threshold: float = 0.5,
           cluster: bool = True, hide_inactive: bool = True, cmap: str = "RdBu_r"):
    """Signed heatmap of the mean effective shifts ``E[delta]``, perturbations x latents.

    Colours are symmetric around 0 (red up, blue down, in units of the latent's SD); latents where
    no shift exceeds ``threshold`` in size and no target is called are hidden, and perturbations
    clustered. Called targets (inclusion probability > 0.5; read from the model or given as
    ``inclusion``, e.g. 0/1 for the calls of ``target_calls(fdr)``) get a dot, however small their
    shift. Returns the ``Axes``.
    """
    model = None if isinstance(model_or_table, pd.DataFrame) else model_or_table
    table = model.shifts() if model is not None else model_or_table
    if inclusion is None and model is not None:
        inclusion = model.intervention_targets()
    called = None if inclusion is None else (inclusion.reindex(index=table.index, columns=table.columns) > 0.5)
    keep = _shown_latents(table, threshold, hide_inactive, called)  # a target of a small shift is still shown
    shown = _prepare(table, keep, cluster)
    limit = float(np.nanmax(np.abs(shown.to_numpy()))) or 1.0
    ax = axes_or_new(ax, figsize=(0.45 * len(keep) + 3.0, 0.18 * len(shown) + 1.6))
    _heatmap(ax, shown, len(table.columns) - len(keep), cmap, -limit, limit, "mean shift (SD of the latent)")
    if inclusion is not None:
        _overlay(ax, shown, called, "target (PIP > 0.5)", s=6)
    return ax
