"""Screen preprocessing with numpy and scipy: which perturbations change expression, which genes vary.

Both statistics are computed in one pass over row chunks of the count matrix, so they work
alike on a dense array, a scipy-sparse matrix or the ``X`` of an AnnData opened with
``backed="r"`` (a file larger than memory). Counts are normalised per cell to ``target_sum``
total counts, as ``scanpy.pp.normalize_total`` does.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

__all__ = ["perturbation_phenotypes", "highly_variable_genes"]


def _chunks(X, chunk_size: int) -> Iterator[tuple]:
    """Yield ``(start, block)``: ``block`` is rows ``start:start + chunk_size`` as dense float64."""
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"Expected chunk_size to be an integer >= 1, but got {chunk_size!r}.")
    for start in range(0, X.shape[0], chunk_size):
        block = X[start:start + chunk_size]
        if sp.issparse(block):
            block = block.toarray()
        yield start, np.asarray(block, dtype=np.float64)


def _normalise(block: np.ndarray, target_sum: float) -> np.ndarray:
    library = block.sum(axis=1, keepdims=True)
    return block * (target_sum / np.maximum(library, 1.0))


def perturbation_phenotypes(
    X,
    labels: Sequence[str],
    control: str,
    *,
    gene_symbols: Optional[Sequence[str]] = None,
    fdr: float = 0.05,
    target_sum: float = 1e4,
    chunk_size: int = 2000,
) -> pd.DataFrame:
    """Count the genes each perturbation changes, against the control cells.

    For every perturbation and gene, Welch's t-test compares log-normalised expression
    (``log1p`` of counts scaled to ``target_sum`` per cell) of its cells with the control cells;
    p-values are adjusted per perturbation over genes (Benjamini-Hochberg). This is the
    ``t-test`` of ``scanpy.tl.rank_genes_groups`` against a reference group, from per-group
    sufficient statistics. A CRISPRi or knockout guide lowers its own target, which says nothing
    about a downstream phenotype: the gene named like the perturbation (``gene_symbols``) is
    tested but not counted.

    Parameters
    ----------
    X : array, scipy-sparse matrix or backed dataset
        ``[n_cells, n_genes]`` raw counts; read in row chunks of ``chunk_size``.
    labels : sequence of str
        ``[n_cells]`` perturbation of each cell; ``control`` marks the reference cells.
    gene_symbols : sequence of str, optional
        ``[n_genes]`` gene names to match perturbation names against.
    fdr : float
        Genes with an adjusted p-value below ``fdr`` count as changed.

    Returns
    -------
    pandas.DataFrame
        One row per perturbation (sorted names, ``control`` excluded), columns ``n_cells`` and
        ``n_de_genes`` (changed genes, the perturbation's own target excluded).
    """
    labels = np.asarray(labels).astype(str)
    if labels.shape != (X.shape[0],):
        raise ValueError(f"Expected {X.shape[0]} labels (one per row of X), but got shape {labels.shape}.")
    if not (labels == control).any():
        raise ValueError(f"control={control!r} is not among the labels; labels seen: {sorted(set(labels))[:10]}.")
    if not 0 < fdr < 1:
        raise ValueError(f"Expected 0 < fdr < 1, but got {fdr!r}.")
    groups = [control] + sorted(set(labels) - {control})  # row 0: the reference
    codes = pd.Categorical(labels, categories=groups).codes
    n = np.bincount(codes, minlength=len(groups)).astype(np.float64)
    sums = np.zeros((len(groups), X.shape[1]))
    squares = np.zeros_like(sums)
    for start, block in _chunks(X, chunk_size):
        logx = np.log1p(_normalise(block, target_sum))
        rows = codes[start:start + len(block)]
        indicator = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(groups), len(rows)))
        sums += indicator @ logx
        squares += indicator @ (logx * logx)
    mean = sums / n[:, None]
    var = np.maximum(squares - n[:, None] * mean**2, 0.0) / np.maximum(n - 1, 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        _, p = stats.ttest_ind_from_stats(mean[1:], np.sqrt(var[1:]), n[1:, None], mean[:1], np.sqrt(var[:1]),
                                          n[:1, None], equal_var=False)
    p = np.where(np.isfinite(p), p, 1.0)  # a gene constant in both groups: no evidence
    changed = stats.false_discovery_control(p, axis=1) < fdr
    if gene_symbols is not None:
        symbols = np.asarray(gene_symbols).astype(str)
        for i, name in enumerate(groups[1:]):
            changed[i, symbols == name] = False
    index = pd.Index(groups[1:], name="perturbation")
    return pd.DataFrame({"n_cells": n[1:].astype(int), "n_de_genes": changed.sum(axis=1)}, index=index)


def highly_variable_genes(
    X,
    n_top_genes: int = 2000,
    *,
    rows: Optional[np.ndarray] = None,
    target_sum: float = 1e4,
    n_bins: int = 20,
    chunk_size: int = 2000,
) -> pd.DataFrame:
    """Rank genes by normalised dispersion (Satija et al. 2015; scanpy's ``flavor="seurat"``).

    Per gene, the mean ``m`` and variance ``v`` of counts scaled to ``target_sum`` per cell give
    the log dispersion ``log(v / m)``; genes are put in ``n_bins`` equal-width bins of
    ``log1p(m)`` and the dispersion is z-scored within its bin (a bin of one gene scores 1), so
    that a gene is variable relative to genes of similar expression. Genes never observed have
    no dispersion and are never selected.

    Parameters
    ----------
    X : array, scipy-sparse matrix or backed dataset
        ``[n_cells, n_genes]`` raw counts.
    n_top_genes : int
        How many genes to flag; all genes with a dispersion if fewer have one.
    rows : np.ndarray of bool, optional
        ``[n_cells]`` the cells to use (default: all).

    Returns
    -------
    pandas.DataFrame
        ``[n_genes]`` rows in the order of ``X``'s columns: ``mean`` (``log1p(m)``),
        ``dispersion`` (log), ``dispersion_norm`` and ``highly_variable`` (bool).
    """
    if not (isinstance(n_top_genes, (int, np.integer)) and n_top_genes >= 1):
        raise ValueError(f"Expected n_top_genes to be an integer >= 1, but got {n_top_genes!r}.")
    if rows is not None:
        rows = np.asarray(rows, dtype=bool)
        if rows.shape != (X.shape[0],):
            raise ValueError(f"Expected rows to be a boolean mask of shape ({X.shape[0]},), but got {rows.shape}.")
    sums, squares, n = np.zeros(X.shape[1]), np.zeros(X.shape[1]), 0
    for start, block in _chunks(X, chunk_size):
        if rows is not None:
            block = block[rows[start:start + len(block)]]
        scaled = _normalise(block, target_sum)
        sums += scaled.sum(axis=0)
        squares += (scaled * scaled).sum(axis=0)
        n += len(scaled)
    if n < 2:
        raise ValueError(f"Expected at least 2 cells to compute gene variances, but got {n}.")
    mean = sums / n
    var = np.maximum(squares - n * mean**2, 0.0) / (n - 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dispersion = np.log(np.where(var > 0, var / np.where(mean > 0, mean, 1.0), np.nan))
    log_mean = np.log1p(mean)
    bins = pd.cut(log_mean, bins=n_bins)
    by_bin = pd.Series(dispersion).groupby(np.asarray(bins.codes), observed=True)
    bin_mean, bin_std = by_bin.transform("mean").to_numpy(), by_bin.transform("std").to_numpy()
    single = ~np.isfinite(bin_std) & np.isfinite(dispersion)
    bin_std[single], bin_mean[single] = bin_mean[single], 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = (dispersion - bin_mean) / bin_std
    score = np.where(np.isfinite(norm), norm, -np.inf)
    top = np.argsort(-score, kind="stable")[:min(n_top_genes, int(np.isfinite(norm).sum()))]
    flag = np.zeros(X.shape[1], dtype=bool)
    flag[top] = True
    return pd.DataFrame({"mean": log_mean, "dispersion": dispersion, "dispersion_norm": norm, "highly_variable": flag})
