"""Loaders for public CRISPR screens from local files (nothing is downloaded), re-exported by
:mod:`pyro_svae.datasets`, with the filtering used before fitting and its record in
``adata.uns["pyro_svae_filtering"]``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

__all__ = ["papalexi2021", "replogle2022", "highly_variable_genes", "differential_genes"]

logger = logging.getLogger(__name__)


def _read(path, columns: Sequence[str], what: str) -> anndata.AnnData:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected the {what} h5ad file (see its docstring).")
    adata = anndata.read_h5ad(path)
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise KeyError(f"{path} lacks the obs column(s) {missing} of the {what} layout; "
                       f"it has {list(adata.obs.columns)}.")
    return adata


def _drop_small(adata, key: str, min_cells: int, keep: Sequence[str] = ()):
    counts = adata.obs[key].value_counts()
    small = sorted(set(counts.index[counts < min_cells]) - set(keep))
    return adata[~adata.obs[key].isin(small).to_numpy()], small


def papalexi2021(path, min_guide_fraction: Optional[float] = None, min_cells: int = 0) -> anndata.AnnData:
    """The ECCITE-seq CRISPR screen of Papalexi et al. 2021 (THP-1 cells, 25 targeted genes).

    Reads the file ``papalexi2021_lowmoi.h5ad`` (raw UMI counts, 299 genes, ``obs`` columns
    ``perturbation`` with ``"control"`` for non-targeting guides, ``grna_frac`` and ``bio_rep``).
    Ready for ``fit(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")``.

    Parameters
    ----------
    min_guide_fraction : float, optional
        Keep cells whose top guide has at least this share of the cell's guide UMIs
        (``obs["grna_frac"]``; 0.8 drops ~4,500 ambiguous cells).
    min_cells : int
        Drop perturbations with fewer cells (after the guide filter); controls are kept.
    """
    adata = _read(path, ["perturbation", "grna_frac", "bio_rep"], "Papalexi 2021")
    record = {"n_cells_read": adata.n_obs}
    if min_guide_fraction is not None:
        adata = adata[(adata.obs["grna_frac"] >= min_guide_fraction).to_numpy()]
        record["min_guide_fraction"] = float(min_guide_fraction)
    adata, dropped = _drop_small(adata, "perturbation", min_cells, keep=["control"])
    record.update(min_cells=int(min_cells), dropped_perturbations=np.asarray(dropped, dtype=object),
                  n_cells_kept=adata.n_obs)
    adata = adata.copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).astype("category")
    adata.uns["pyro_svae_filtering"] = record
    logger.info("Papalexi 2021: %d of %d cells kept; perturbations dropped: %s.", adata.n_obs, record["n_cells_read"],
                dropped)
    return adata


def _normalized(counts, scale: float = 1e4, log: bool = True):
    """``scale * x / library`` per cell, ``log1p`` of it with ``log``; sparse in, sparse out."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    library = np.maximum(np.asarray(counts.sum(1)).ravel(), 1.0)
    normalized = (sp.diags(scale / library) @ counts).tocsr()
    if log:
        normalized.data = np.log1p(normalized.data)
    return normalized


def highly_variable_genes(counts, n_top_genes: int = 2000, n_bins: int = 20) -> np.ndarray:
    """Positions of the ``n_top_genes`` most variable genes, as scanpy's ``flavor="seurat"``:
    on counts per 10,000, genes are binned by ``log1p`` mean and ranked by the z-score of their
    log dispersion (variance / mean) within their bin."""
    x = _normalized(counts, log=False)
    n = x.shape[0]
    mean = np.asarray(x.mean(0)).ravel()
    variance = (np.asarray(x.multiply(x).mean(0)).ravel() - mean**2) * n / max(n - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.log(np.where(mean > 0, variance / mean, np.nan))
    frame = pd.DataFrame({"dispersion": dispersion, "bin": pd.cut(np.log1p(mean), n_bins)})
    grouped = frame.groupby("bin", observed=True)["dispersion"]
    spread = grouped.transform("std")
    z = (frame["dispersion"] - grouped.transform("mean")) / spread.where(spread > 0, 1.0)
    z = z.fillna(-np.inf).to_numpy()  # genes never expressed rank last
    return np.sort(np.argsort(-z, kind="stable")[:min(n_top_genes, len(z))])


def differential_genes(counts, labels: np.ndarray, control: str, alpha: float = 0.05) -> pd.Series:
    """Genes changed by each perturbation: Welch t-tests of ``log1p`` normalised expression
    against the control cells, Benjamini-Hochberg at ``alpha`` within each perturbation."""
    x = _normalized(counts)
    groups, codes = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    if control not in groups:
        raise ValueError(f"control={control!r} is not a label; labels seen: {list(groups[:10])}.")
    indicator = sp.csr_matrix((np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(groups), len(codes)))
    n = np.asarray(indicator.sum(1)).ravel()[:, None]
    mean = (indicator @ x).toarray() / n
    variance = np.maximum(((indicator @ x.multiply(x)).toarray() / n - mean**2) * n / np.maximum(n - 1, 1), 1e-12)
    c = int(np.flatnonzero(groups == control)[0])
    result = {}
    for g, name in enumerate(groups):
        if g == c or n[g, 0] < 2:
            continue
        t = (mean[g] - mean[c]) / np.sqrt(variance[g] / n[g, 0] + variance[c] / n[c, 0])
        dof = (variance[g] / n[g, 0] + variance[c] / n[c, 0]) ** 2 / (
            (variance[g] / n[g, 0]) ** 2 / (n[g, 0] - 1) + (variance[c] / n[c, 0]) ** 2 / (n[c, 0] - 1))
        p = 2 * stats.t.sf(np.abs(t), dof)
        adjusted = stats.false_discovery_control(np.nan_to_num(p, nan=1.0), method="bh")
        result[name] = int((adjusted <= alpha).sum())
    return pd.Series(result, name="n_differential_genes", dtype=int)


def replogle2022(path, min_cells: int = 25, min_differential_genes: int = 20, n_top_genes: int = 2000,
                 control_label: str = "non-targeting", control: str = "control", alpha: float = 0.05) -> anndata.AnnData:
    """A Replogle et al. 2022 Perturb-seq screen (K562 essential or genome-wide), filtered as in
    the sVAE paper: perturbations with a strong transcriptional phenotype, highly variable genes.

    Reads a local copy of the public h5ad with raw counts in ``X`` and ``obs["gene"]`` the
    targeted gene (``"non-targeting"`` for controls); gene symbols from ``var["gene_name"]`` when
    present. The paper kept perturbations that Replogle et al.'s energy-distance test called
    significant; that test's results are not in the h5ad, so a transparent proxy is used: a
    perturbation is kept when at least ``min_differential_genes`` genes differ from the controls
    (:func:`differential_genes`, Welch t-test, BH at ``alpha``) and it has ``min_cells`` cells.
    Then the ``n_top_genes`` highly variable genes of the kept cells
    (:func:`highly_variable_genes`). ``obs["perturbation"]`` holds the target with controls
    renamed ``control``; what was dropped is recorded in ``uns["pyro_svae_filtering"]``.
    """
    adata = _read(path, ["gene"], "Replogle 2022")
    labels = adata.obs["gene"].astype(str)
    if not (labels == control_label).any():
        raise ValueError(f"No cell of {path} has obs['gene'] == {control_label!r} (the controls); "
                         f"labels seen: {sorted(labels.unique())[:10]}.")
    record = {"n_cells_read": adata.n_obs, "n_genes_read": adata.n_vars, "min_cells": int(min_cells),
              "min_differential_genes": int(min_differential_genes), "alpha": float(alpha)}
    perturbation = labels.where(labels != control_label, control)
    adata.obs["perturbation"] = perturbation.to_numpy()
    adata, small = _drop_small(adata, "perturbation", min_cells, keep=[control])
    n_de = differential_genes(adata.X, adata.obs["perturbation"].to_numpy(), control, alpha)
    weak = sorted(n_de.index[n_de < min_differential_genes])
    adata = adata[~adata.obs["perturbation"].isin(weak).to_numpy()]
    genes = highly_variable_genes(adata.X, n_top_genes)
    adata = adata[:, genes].copy()
    if "gene_name" in adata.var.columns:
        adata.var["gene_id"] = adata.var_names.to_numpy()
        adata.var_names = adata.var["gene_name"].astype(str).to_numpy()
        adata.var_names_make_unique()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype("category")
    record.update(dropped_small=np.asarray(small, dtype=object), dropped_weak=np.asarray(weak, dtype=object),
                  n_differential_genes=n_de.reindex(sorted(n_de.index)).to_numpy(),
                  n_differential_genes_perturbations=np.asarray(sorted(n_de.index), dtype=object),
                  n_cells_kept=adata.n_obs, n_genes_kept=adata.n_vars)
    adata.uns["pyro_svae_filtering"] = record
    logger.info("Replogle 2022: kept %d perturbations (%d without a strong phenotype, %d with < %d cells dropped), "
                "%d cells, %d genes.", adata.obs["perturbation"].nunique() - 1, len(weak), len(small), min_cells,
                adata.n_obs, adata.n_vars)
    return adata
