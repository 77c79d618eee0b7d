"""The Papalexi et al. (2021) ECCITE-seq knockout screen in THP-1 cells, ready for ``fit``."""

from __future__ import annotations

import logging
from typing import Optional

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._io import read_h5ad, require_columns

__all__ = ["papalexi2021"]

logger = logging.getLogger(__name__)


def papalexi2021(
    path,
    *,
    min_guide_fraction: Optional[float] = None,
    min_cells: int = 50,
    control: str = "control",
) -> anndata.AnnData:
    """Read the low-MOI Papalexi 2021 screen and filter cells, perturbations and genes.

    The file is the ``lowmoi_example_data`` of the sceptredata R package as h5ad: raw UMI
    counts in ``X`` (20,729 cells x 299 genes), ``obs["perturbation"]`` (the target of the
    cell's top guide, ``"control"`` for non-targeting guides), ``obs["grna_frac"]`` (that guide's
    share of the cell's guide UMIs) and ``obs["bio_rep"]`` (replicate, a batch).

    Parameters
    ----------
    path : str or Path
        The h5ad file; a missing file raises ``FileNotFoundError``.
    min_guide_fraction : float, optional
        Keep only cells whose top guide holds at least this share of their guide UMIs (e.g.
        0.8; 4,537 cells are below it): a cell with two guides has an ambiguous label.
        Default: no guide-purity filter.
    min_cells : int
        Drop perturbations with fewer cells (after the guide filter). 50 by default: with fewer
        cells a perturbation's shift is barely informed by data; it drops SPI1 (48 cells).
    control : str
        Label of the non-targeting cells; always kept.

    Returns
    -------
    anndata.AnnData
        ``X`` ``[n_cells, n_genes]`` CSR float32 raw counts, genes with no count in the kept cells
        removed; ``obs`` as in the file with ``"perturbation"`` categorical (unused labels
        dropped); ``uns["pyro_svae_filtering"]`` records what was removed. Fit it with
        ``pyro_svae.fit(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")``.
    """
    if min_guide_fraction is not None and not 0 < min_guide_fraction <= 1:
        raise ValueError(f"Expected min_guide_fraction in (0, 1] or None, but got {min_guide_fraction!r}.")
    if not (isinstance(min_cells, (int, np.integer)) and min_cells >= 1):
        raise ValueError(f"Expected min_cells to be an integer >= 1, but got {min_cells!r}.")
    adata = read_h5ad(path)
    needed = ["perturbation", "bio_rep"] + ([] if min_guide_fraction is None else ["grna_frac"])
    require_columns(adata.obs, needed, "obs", path, "for the perturbation labels, the batch and guide purity")
    labels = adata.obs["perturbation"].astype(str)
    if not (labels == control).any():
        raise ValueError(f"{str(path)!r}: control={control!r} is not a label of obs['perturbation']; "
                         f"labels seen: {sorted(labels.unique())[:10]}.")
    record = {"source": str(path), "n_cells_read": adata.n_obs, "n_genes_read": adata.n_vars, "min_cells": int(min_cells)}

    keep = np.ones(adata.n_obs, dtype=bool)
    if min_guide_fraction is not None:
        keep &= (adata.obs["grna_frac"] >= min_guide_fraction).to_numpy()
        record.update(min_guide_fraction=float(min_guide_fraction), cells_below_guide_fraction=int((~keep).sum()))
        logger.info("Dropped %d cells whose top guide holds less than %g of their guide UMIs.",
                    (~keep).sum(), min_guide_fraction)
    sizes = labels[keep].value_counts()
    small = sorted(p for p, size in sizes.items() if size < min_cells and p != control)
    dropped = labels.isin(small).to_numpy() & keep
    keep &= ~dropped
    record.update(perturbations_dropped=small, cells_of_dropped_perturbations=int(dropped.sum()))
    if small:
        logger.info("Dropped %d perturbations with fewer than %d cells (%d cells): %s.",
                    len(small), min_cells, dropped.sum(), ", ".join(small))

    result = adata[keep].copy()
    expressed = np.asarray(result.X.sum(axis=0)).reshape(-1) > 0
    record.update(genes_without_counts=int((~expressed).sum()))
    if not expressed.all():
        logger.info("Dropped %d genes with no count in the kept cells.", (~expressed).sum())
        result = result[:, expressed].copy()
    result.X = sp.csr_matrix(result.X, dtype=np.float32)
    result.obs["perturbation"] = pd.Categorical(labels[keep].to_numpy())
    for column in result.obs.columns:
        if isinstance(result.obs[column].dtype, pd.CategoricalDtype):
            result.obs[column] = result.obs[column].cat.remove_unused_categories()
    record.update(n_cells=result.n_obs, n_genes=result.n_vars,
                  n_perturbations=int(result.obs["perturbation"].cat.categories.size - 1))
    result.uns["pyro_svae_filtering"] = record
    return result
