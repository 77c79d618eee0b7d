"""Plots of a fit's checks: posterior predictive statistics, and the latents of each perturbation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import HORIZONTAL_VIOLINS, tick_fontsize

__all__ = ["ppc", "latent"]


_PPC_PANELS = {"gene_mean": ("mean per gene", True), "gene_variance": ("variance per gene", True),
               "gene_zero_fraction": ("zero fraction per gene", False)}


def ppc(idata_or_summary, statistics=("gene_mean", "gene_variance", "gene_zero_fraction"), ax=None, interval=0.9):
    """Observed against predicted per-gene statistics, with predictive intervals.

    One panel per statistic (mean and variance on log scales, zero fraction linear): a point per
    gene at (observed, predictive median) with its central interval as a vertical bar, and the
    diagonal. The title gives the share of genes whose central ``interval`` covers the observed
    value (for a summary table, pass the ``interval`` it was made with).

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
        from ..predictive import ppc_summary

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
        a.set_title(f"{label}\n{rows['inside'].mean():.0%} inside the central {interval:.0%} interval", fontsize=9)
    return axes


def latent(model, adata, n_perturbations: int = 6, latents=None, key: str = "X_svae", ax=None,
           min_shift: float = 0.25, columns: int = 4):
    """Each latent's distribution in the control cells and in the perturbations that shift it most.

    One panel per latent (titled), horizontal violins with the labels on the y-axis: the
    controls, then up to ``n_perturbations`` perturbations with the largest mean shift of that
    latent (at least ``min_shift`` in size: an unshifted perturbation is never listed). A target
    shows as a displaced violin. Latents come from ``adata.obsm[key]`` (written by
    :meth:`pyro_svae.SVAE.write`) when present, else ``model.get_latent``; shifts from
    ``adata.uns["svae"]`` when present, else ``model.shifts()``.

    Returns
    -------
    list of Axes, one per latent shown.
    """
    z = adata.obsm[key] if key in adata.obsm else model.get_latent(adata)
    if "svae" in adata.uns and key in adata.obsm:
        shifts = pd.DataFrame(np.asarray(adata.uns["svae"]["shifts"]),
                              index=[str(p) for p in adata.uns["svae"]["perturbation_names"]])
    else:
        shifts = model.shifts()
    shifts.columns = range(shifts.shape[1])
    latents = list(range(z.shape[1])) if latents is None else list(latents)
    labels = adata.obs[model.config.perturbation_key].astype(str).to_numpy()
    control = model.config.control
    if ax is None:
        import matplotlib.pyplot as plt

        n_cols = min(columns, len(latents))
        n_rows = -(-len(latents) // n_cols)
        height = 0.28 * (n_perturbations + 1) + 0.9
        fig, ax = plt.subplots(n_rows, n_cols, figsize=(3.3 * n_cols, height * n_rows), squeeze=False)
        for extra in ax.ravel()[len(latents):]:
            extra.set_visible(False)
        ax = ax.ravel()[:len(latents)]
    axes = list(np.atleast_1d(ax))
    if len(axes) != len(latents):
        raise ValueError(f"Expected {len(latents)} axes (one per latent), but got {len(axes)}.")
    for a, k in zip(axes, latents):
        strongest = shifts[k].abs().sort_values(ascending=False)
        top = [str(p) for p in strongest.index[strongest >= min_shift][:n_perturbations]]
        groups = [g for g in ([control] if control is not None else []) + top if (labels == g).any()]
        if groups:
            a.violinplot([z[labels == g, k] for g in groups], showmedians=True, widths=0.8, **HORIZONTAL_VIOLINS)
            a.set_yticks(range(1, len(groups) + 1), groups, fontsize=tick_fontsize(len(groups), 90))
            a.invert_yaxis()
        if control is not None and (labels == control).any():
            a.axvline(np.median(z[labels == control, k]), color="0.5", lw=0.8, ls=":")
        a.set_title(f"latent {k}" + ("" if top else " (no shifted perturbation)"), fontsize=9)
        a.set_xlabel(f"z{k}", fontsize=8)
        a.tick_params(axis="x", labelsize=7)
    if axes:
        axes[0].figure.tight_layout()
    return axes
