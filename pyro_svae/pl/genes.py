"""What the latents do in gene space: each latent's top genes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import axes_or_new, tick_fontsize

__all__ = ["gene_programs"]


def gene_programs(programs: pd.DataFrame, latents=None, n_genes: int = 8, ax=None, cmap: str = "RdBu_r"):
    """Heatmap of each latent's top genes in its gene program (:meth:`pyro_svae.SVAE.gene_programs`).

    For every latent shown (default: all), its ``n_genes`` genes of largest ``|d log mu / d z|``;
    rows are those genes, grouped by the latent that selected them, columns the latents, colours
    the signed effect (change of the gene's log mean expression per unit of the latent), symmetric
    around 0. Returns the ``Axes``.
    """
    latents = list(programs.index) if latents is None else list(latents)
    unknown = [k for k in latents if k not in programs.index]
    if unknown:
        raise KeyError(f"latents {unknown} are not in the programs; expected some of {list(programs.index)}.")
    genes = []
    for k in latents:
        for gene in programs.loc[k].abs().sort_values(ascending=False).index[:n_genes]:
            if gene not in genes:
                genes.append(gene)
    table = programs.loc[latents, genes].T  # [genes x latents]
    limit = float(np.abs(table.to_numpy()).max()) or 1.0
    ax = axes_or_new(ax, figsize=(0.5 * len(latents) + 3.0, 0.17 * len(genes) + 1.4))
    image = ax.imshow(table.to_numpy(), aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks(range(len(latents)), [str(k) for k in latents])
    ax.set_yticks(range(len(genes)), genes, fontsize=tick_fontsize(len(genes)))
    ax.set_xlabel("latent")
    ax.set_ylabel(f"top {n_genes} genes of each latent")
    ax.figure.colorbar(image, ax=ax, label="d log mean expression / d latent")
    return ax
