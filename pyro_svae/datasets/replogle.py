"""The Replogle et al. (2022) K562 Perturb-seq screens (CRISPRi), filtered as in the sVAE paper.

Lopez et al. (2023, Sec. 6) keep the perturbations with a strong transcriptional phenotype, by
the energy-distance test of Replogle et al., and the highly variable genes. The test's results
are not in the public h5ad files, so :func:`replogle2022` uses a documented proxy: the number of
genes a perturbation changes against the non-targeting cells
(:func:`~pyro_svae.datasets.preprocess.perturbation_phenotypes`).
"""

from __future__ import annotations

import logging

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._io import read_h5ad, require_columns
from .preprocess import _chunks, highly_variable_genes, perturbation_phenotypes

__all__ = ["replogle2022"]

logger = logging.getLogger(__name__)


def _subset(X, rows: np.ndarray, columns: np.ndarray, chunk_size: int) -> sp.csr_matrix:
    """Rows ``rows`` (bool mask) and columns ``columns`` (indices) of ``X``, read in chunks, as CSR float32."""
    parts = [sp.csr_matrix(block[rows[start:start + len(block)]][:, columns].astype(np.float32))
             for start, block in _chunks(X, chunk_size)]
    return sp.vstack(parts, format="csr")


def replogle2022(
    path,
    *,
    min_cells: int = 50,
    fdr: float = 0.05,
    min_de_genes: int = 10,
    n_top_genes: int = 2000,
    target_sum: float = 1e4,
    perturbation_column: str = "gene",
    control_label: str = "non-targeting",
    control: str = "control",
    chunk_size: int = 2000,
) -> anndata.AnnData:
    """Read a Replogle 2022 K562 h5ad (raw counts, single cell) from disk and filter it.

    The essential-gene and genome-wide single-cell files of the figshare release hold raw UMI
    counts in ``X`` and the targeted gene in ``obs["gene"]`` (``"non-targeting"`` for controls);
    ``var["gene_name"]`` has gene symbols. Nothing is downloaded: pass the local file. It is read
    in chunks of ``chunk_size`` cells (``backed="r"``), three times, so it need not fit in memory;
    peak memory is a few ``[n_perturbations, n_genes]`` float64 arrays (the test statistics)
    plus the result.

    Steps: (1) drop perturbations with fewer than ``min_cells`` cells (50 by default: fewer give
    the shift little data and the test little power); (2) keep perturbations that change at
    least ``min_de_genes`` genes at false discovery rate ``fdr`` (Welch t-tests on log-normalised
    expression against the controls, Benjamini-Hochberg, the targeted gene itself not counted);
    10 by default, because a guide that only lowers its own target, or a handful of genes, has
    no phenotype for the latents to explain; (3) keep the ``n_top_genes`` most variable genes of
    the kept cells (normalised dispersion, scanpy's ``flavor="seurat"``; 2,000 by default, the
    usual choice of scanpy and Seurat). Control cells are all kept and relabelled ``control``.

    Parameters
    ----------
    perturbation_column, control_label : str
        Column of ``obs`` with the targeted gene, and its label for non-targeting guides.
    control : str
        The control label of the result, as passed to ``pyro_svae.fit(..., control=...)``.

    Returns
    -------
    anndata.AnnData
        ``X`` ``[n_cells, n_top_genes]`` CSR float32 raw counts, genes in file order; ``obs`` as in
        the file plus ``"perturbation"`` (categorical); ``var`` as in the file plus the
        dispersion statistics; ``uns["pyro_svae_filtering"]`` holds the settings, the dropped
        perturbations and the per-perturbation table ``phenotypes`` (``n_cells``, ``n_de_genes``).
        Fit it with ``pyro_svae.fit(adata, perturbation_key="perturbation", control="control")``.
    """
    if not (isinstance(min_cells, (int, np.integer)) and min_cells >= 2):
        raise ValueError(f"Expected min_cells to be an integer >= 2, but got {min_cells!r}.")
    if not (isinstance(min_de_genes, (int, np.integer)) and min_de_genes >= 0):
        raise ValueError(f"Expected min_de_genes to be an integer >= 0, but got {min_de_genes!r}.")
    adata = read_h5ad(path, backed="r")
    try:
        return _filter(adata, path, min_cells, fdr, min_de_genes, n_top_genes, target_sum, perturbation_column,
                       control_label, control, chunk_size)
    finally:
        adata.file.close()


def _filter(adata, path, min_cells, fdr, min_de_genes, n_top_genes, target_sum, perturbation_column,
            control_label, control, chunk_size) -> anndata.AnnData:
    require_columns(adata.obs, [perturbation_column], "obs", path, "for the targeted gene of each cell")
    column = adata.obs[perturbation_column]
    if column.isna().any():
        raise ValueError(f"{str(path)!r}: obs[{perturbation_column!r}] has {int(column.isna().sum())} missing labels; "
                         "expected a targeted gene or control label for every cell.")
    labels = column.astype(str).to_numpy()
    if not (labels == control_label).any():
        raise ValueError(f"{str(path)!r}: control_label={control_label!r} is not a label of obs[{perturbation_column!r}]; "
                         f"labels seen: {sorted(set(labels))[:10]}.")
    if control != control_label and (labels == control).any():
        raise ValueError(f"{str(path)!r}: control={control!r} is already a perturbation label of "
                         f"obs[{perturbation_column!r}]; pass another control label.")
    symbols = adata.var["gene_name"] if "gene_name" in adata.var.columns else adata.var_names
    phenotypes = perturbation_phenotypes(adata.X, labels, control_label, gene_symbols=symbols, fdr=fdr,
                                         target_sum=target_sum, chunk_size=chunk_size)
    few = phenotypes["n_cells"] < min_cells
    weak = ~few & (phenotypes["n_de_genes"] < min_de_genes)
    kept = phenotypes.index[~few & ~weak]
    logger.info("%d perturbations: %d with fewer than %d cells, %d changing fewer than %d genes at FDR %g; %d kept.",
                len(phenotypes), few.sum(), min_cells, weak.sum(), min_de_genes, fdr, len(kept))
    if len(kept) == 0:
        raise ValueError(f"{str(path)!r}: no perturbation has >= {min_cells} cells and >= {min_de_genes} changed genes "
                         f"(most changed genes: {int(phenotypes['n_de_genes'].max())}); lower min_cells or min_de_genes.")
    rows = (labels == control_label) | np.isin(labels, kept)

    genes = highly_variable_genes(adata.X, n_top_genes, rows=rows, target_sum=target_sum, chunk_size=chunk_size)
    columns = np.flatnonzero(genes["highly_variable"].to_numpy())
    if len(columns) < n_top_genes:
        logger.info("Only %d genes have a dispersion; keeping them all (n_top_genes=%d).", len(columns), n_top_genes)

    obs = adata.obs.iloc[np.flatnonzero(rows)].copy()
    obs["perturbation"] = pd.Categorical(np.where(labels[rows] == control_label, control, labels[rows]))
    for name in obs.columns:
        if isinstance(obs[name].dtype, pd.CategoricalDtype):
            obs[name] = obs[name].cat.remove_unused_categories()
    var = adata.var.iloc[columns].copy()
    for name in ("mean", "dispersion", "dispersion_norm"):
        var[f"hvg_{name}"] = genes[name].to_numpy()[columns]
    result = anndata.AnnData(X=_subset(adata.X, rows, columns, chunk_size), obs=obs, var=var)
    result.uns["pyro_svae_filtering"] = {
        "source": str(path), "n_cells_read": int(adata.n_obs), "n_genes_read": int(adata.n_vars),
        "min_cells": int(min_cells), "fdr": float(fdr), "min_de_genes": int(min_de_genes),
        "n_top_genes": int(n_top_genes), "target_sum": float(target_sum),
        "perturbations_too_few_cells": list(phenotypes.index[few]),
        "perturbations_weak_phenotype": list(phenotypes.index[weak]),
        "phenotypes": phenotypes.reset_index(),
        "n_cells": int(result.n_obs), "n_genes": int(result.n_vars), "n_perturbations": len(kept),
    }
    return result
