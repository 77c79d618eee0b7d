"""Plots. Each takes data (or a fitted model's tables) and an optional ``ax``, returns the ``Axes``,
and never runs inference beyond reading the fitted model."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["training", "targets", "ppc", "latent"]


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


_PPC_PANELS = {"gene_mean": ("mean per gene", True), "gene_variance": ("variance per gene", True),
               "gene_zero_fraction": ("zero fraction per gene", False)}


def ppc(idata_or_summary, statistics=("gene_mean", "gene_variance", "gene_zero_fraction"), ax=None, interval=0.9):
    """Observed against predicted per-gene statistics, with predictive intervals.

    One panel per statistic (mean and variance on log scales, zero fraction linear): a point per
    gene at (observed, predictive median) with its central interval as a vertical bar, and the
    diagonal. The title gives the share of genes whose interval covers the observed value.

    Parameters
    ----------
    idata_or_summary : pandas.DataFrame or arviz.InferenceData
        The table of :meth:`pyro_svae.SVAE.ppc_summary`, or the ``InferenceData`` of
        :meth:`pyro_svae.SVAE.to_arviz` (its ``observed_data`` and ``posterior_predictive``
        ``counts``; no inference is run).
    ax : matplotlib Axes or sequence of them, optional
        One per statistic.

    Returns
    -------
    list of Axes, one per statistic.
    """
    summary = idata_or_summary
    if not isinstance(summary, pd.DataFrame):
        from .predictive import ppc_summary

        observed = summary["observed_data"]["counts"]
        replicated = np.asarray(summary["posterior_predictive"]["counts"]).reshape((-1,) + observed.shape)
        summary = ppc_summary(np.asarray(observed), replicated, gene_names=list(map(str, observed["gene"].values)),
                              interval=interval)
    unknown = [s for s in statistics if s not in _PPC_PANELS]
    if unknown:
        raise ValueError(f"pl.ppc draws {list(_PPC_PANELS)}; got {unknown}.")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(1, len(statistics), figsize=(3.6 * len(statistics), 3.4), squeeze=False)
        ax = ax[0]
    axes = list(np.atleast_1d(ax))
    if len(axes) != len(statistics):
        raise ValueError(f"Expected {len(statistics)} axes (one per statistic), but got {len(axes)}.")
    for a, statistic in zip(axes, statistics):
        rows = summary[summary["statistic"] == statistic]
        label, log = _PPC_PANELS[statistic]
        x, y = rows["observed"].to_numpy(float), rows["predicted"].to_numpy(float)
        a.vlines(x, rows["lower"].to_numpy(float), rows["upper"].to_numpy(float), color="0.6", lw=0.8, label="interval")
        a.scatter(x, y, s=8, zorder=3, label="median")
        limits = [np.nanmin([x.min(), rows["lower"].min()]), np.nanmax([x.max(), rows["upper"].max()])]
        if log:
            positive = np.concatenate([x[x > 0], rows["lower"].to_numpy(float)])
            limits[0] = max(limits[0], positive[positive > 0].min() if (positive > 0).any() else 1e-3)
            a.set_xscale("log")
            a.set_yscale("log")
        a.plot(limits, limits, color="k", lw=0.8, ls="--", label="observed = predicted")
        a.set_xlabel(f"observed {label}")
        a.set_ylabel("predicted")
        a.set_title(f"{label}: {rows['inside'].mean():.0%} inside", fontsize=10)
    return axes


def latent(model, adata, n_perturbations: int = 6, latents=None, key: str = "X_svae", ax=None):
    """Each latent's distribution per perturbation, for the most shifted perturbations.

    A grid of violin plots (one panel per latent): ``z_k`` of the control cells and of the
    ``n_perturbations`` perturbations with the largest effective shifts, so that a target shows
    as a displaced violin. Latents are read from ``adata.obsm[key]`` (written by
    :meth:`pyro_svae.SVAE.write`) when present, else computed with ``model.get_latent``;
    shifts from ``adata.uns["svae"]`` when present, else ``model.shifts()``.

    Returns
    -------
    list of Axes, one per latent shown.
    """
    z = adata.obsm[key] if key in adata.obsm else model.get_latent(adata)
    if "svae" in adata.uns and key in adata.obsm:
        shifts = pd.DataFrame(adata.uns["svae"]["shifts"], index=list(adata.uns["svae"]["perturbation_names"]))
    else:
        shifts = model.shifts()
    latents = list(range(z.shape[1])) if latents is None else list(latents)
    top = shifts.abs().max(axis=1).sort_values(ascending=False).index[:n_perturbations]
    labels = adata.obs[model.config.perturbation_key].astype(str).to_numpy()
    groups = ([model.config.control] if model.config.control is not None else []) + [str(p) for p in top]
    groups = [g for g in groups if (labels == g).any()]
    if ax is None:
        import matplotlib.pyplot as plt

        columns = min(3, len(latents))
        rows = -(-len(latents) // columns)
        _, ax = plt.subplots(rows, columns, figsize=(0.5 * len(groups) * columns + 2.5, 2.6 * rows), squeeze=False)
        for extra in ax.ravel()[len(latents):]:
            extra.set_visible(False)
        ax = ax.ravel()[:len(latents)]
    axes = list(np.atleast_1d(ax))
    if len(axes) != len(latents):
        raise ValueError(f"Expected {len(latents)} axes (one per latent), but got {len(axes)}.")
    for a, k in zip(axes, latents):
        a.violinplot([z[labels == g, k] for g in groups], showmedians=True)
        a.set_xticks(range(1, len(groups) + 1), groups, rotation=90, fontsize=7)
        a.set_ylabel(f"z{k}")
    return axes
