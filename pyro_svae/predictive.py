"""Posterior predictive checks: replicated counts through the guide, and the statistics a
single-cell user compares with the data (per gene, per cell, per perturbation).

The replicated data of a cell are drawn as ``z ~ q(z | x)`` (the encoder) then
``counts ~ p(x | z)`` (the decoder and count likelihood) by :class:`pyro.infer.Predictive`, with
the cell's observed library size, batch and perturbation.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch
from pyro.infer import Predictive

from .runtime import DataOnDevice

__all__ = ["posterior_predictive", "ppc_summary", "STATISTICS", "positions"]

#: The statistics of :func:`ppc_summary`, in the order of its rows.
STATISTICS = ("gene_mean", "gene_variance", "gene_zero_fraction", "cell_library_size", "perturbation_shift")
#: Upper bound on the elements of one minibatch of replicated counts (``samples x cells x genes``).
_MAX_ELEMENTS = 2 ** 25


def positions(selection, names: Sequence[str], what: str) -> np.ndarray:
    """Integer positions of ``selection`` (names, integer positions or a boolean mask) in ``names``.

    ``None`` selects everything. Unknown names raise a ``KeyError`` listing a few of them.
    """
    n = len(names)
    if selection is None:
        return np.arange(n)
    selection = np.asarray(selection)
    if selection.dtype == bool:
        if selection.shape != (n,):
            raise ValueError(f"A boolean {what} mask must have length {n}, but got shape {selection.shape}.")
        return np.flatnonzero(selection)
    if selection.ndim != 1:
        raise ValueError(f"{what} must be a 1-d list of names or positions, but got shape {selection.shape}.")
    if np.issubdtype(selection.dtype, np.integer):
        if selection.size and (selection.min() < -n or selection.max() >= n):
            raise IndexError(f"{what} positions must lie in [0, {n}), but got {selection.min()}..{selection.max()}.")
        return selection % n if n else selection
    lookup = pd.Index(list(map(str, names)))
    found = lookup.get_indexer(selection.astype(str))
    if (found < 0).any():
        missing = list(selection[found < 0][:5])
        raise KeyError(f"{(found < 0).sum()} {what} not found, e.g. {missing}.")
    return found


def _cell_chunks(n_cells: int, num_samples: int, n_genes: int, batch_size: int):
    """Minibatches of cell positions small enough that a minibatch of replicates stays bounded."""
    size = max(1, min(batch_size, _MAX_ELEMENTS // max(1, num_samples * n_genes)))
    return [np.arange(start, min(start + size, n_cells)) for start in range(0, n_cells, size)]


def _replicates(components, screen, device, cells: np.ndarray, num_samples: int, batch_size: int):
    """Yield ``(minibatch positions, z [S, B, K], counts [S, B, G])`` (inside the model's param scope)."""
    model_fn, guide_fn = components.functions()

    def replicate(**batch):  # the model with its observation left free: it samples the counts
        return model_fn(**{**batch, "counts": None})

    predictive = Predictive(replicate, guide=guide_fn, num_samples=num_samples, return_sites=("z", "counts"))
    data = DataOnDevice(screen, device)
    with torch.no_grad():
        for chunk in _cell_chunks(len(cells), num_samples, screen.n_genes, batch_size):
            draws = predictive(**data.minibatch(cells[chunk]))
            # Predictive pads sites to the model's plate nesting ([S, 1, B, ...]): drop the padding
            n = len(chunk)
            yield chunk, draws["z"].reshape(num_samples, n, -1), draws["counts"].reshape(num_samples, n, -1)


def posterior_predictive(components, screen, device, num_samples: int = 100, genes=None, cells=None,
                         batch_size: int = 1024) -> dict:
    """Replicated counts of the selected cells and genes (inside the model's param scope).

    See :meth:`pyro_svae.SVAE.posterior_predictive`. Returns a dict: ``counts``
    ``[num_samples, n_cells, n_genes]`` int32, ``z`` ``[num_samples, n_cells, K]`` float32, and the
    positions ``cells`` and ``genes`` selected.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, but got {num_samples}.")
    cell_pos = positions(cells, screen.cell_names, "cells")
    gene_pos = positions(genes, components.layout.genes, "genes")
    counts = np.empty((num_samples, len(cell_pos), len(gene_pos)), dtype=np.int32)
    latents = np.empty((num_samples, len(cell_pos), components.config.n_latent), np.float32)
    gene_index = torch.as_tensor(gene_pos, device=device)
    for chunk, z, replicated in _replicates(components, screen, device, cell_pos, num_samples, batch_size):
        counts[:, chunk] = replicated.index_select(-1, gene_index).round().cpu().numpy().astype(np.int32)
        latents[:, chunk] = z.cpu().numpy()
    return {"counts": counts, "z": latents, "cells": cell_pos, "genes": gene_pos}


def _interval(observed: np.ndarray, replicated: np.ndarray, interval: float) -> dict:
    """Observed value, central predictive interval and whether it covers, per column of ``replicated [S, F]``."""
    alpha = (1.0 - interval) / 2.0
    lower, median, upper = np.quantile(replicated, [alpha, 0.5, 1.0 - alpha], axis=0)
    return {"observed": observed, "lower": lower, "predicted": median, "upper": upper,
            "inside": (observed >= lower) & (observed <= upper)}


def _log_normalized_means(counts: np.ndarray, groups: np.ndarray, n_groups: int, scale: float = 1e4) -> np.ndarray:
    """Mean of ``log1p(scale * x / library)`` per group and gene: ``[n_groups, G]``."""
    library = np.maximum(counts.sum(-1, keepdims=True), 1.0)
    expression = np.log1p(scale * counts / library)
    sums = np.zeros((n_groups, counts.shape[-1]))
    np.add.at(sums, groups, expression)
    return sums / np.maximum(np.bincount(groups, minlength=n_groups), 1)[:, None]


def ppc_summary(observed, replicated: np.ndarray, labels: Optional[Sequence[str]] = None,
                control: Optional[str] = "control", gene_names: Optional[Sequence[str]] = None,
                cell_names: Optional[Sequence[str]] = None, interval: float = 0.9) -> pd.DataFrame:
    """Observed statistics against their posterior predictive intervals, one row per statistic and item.

    Parameters
    ----------
    observed : array ``[n_cells, n_genes]`` (dense or scipy sparse)
    replicated : array ``[num_samples, n_cells, n_genes]``
        From :func:`posterior_predictive`.
    labels : sequence of str ``[n_cells]``, optional
        Perturbation label of each cell; with ``control`` among them, the ``perturbation_shift``
        rows are added: per perturbation and gene, the mean ``log1p`` normalised expression
        (counts per 10,000) minus that of the control cells.
    interval : float
        Mass of the central predictive interval.

    Returns
    -------
    pandas.DataFrame
        Columns ``statistic`` (one of :data:`STATISTICS`), ``perturbation``, ``gene``, ``cell``
        (the item; ``None`` where it does not apply), ``observed``, ``lower``, ``predicted`` (the predictive median),
        ``upper`` and ``inside`` (whether the interval covers the observed value). The coverage
        of each statistic is ``summary.groupby("statistic")["inside"].mean()``.
    """
    if hasattr(observed, "toarray"):
        observed = observed.toarray()
    observed = np.asarray(observed, dtype=np.float64)
    replicated = np.asarray(replicated)
    if replicated.ndim != 3 or replicated.shape[1:] != observed.shape:
        raise ValueError(f"replicated must have shape (num_samples, {observed.shape[0]}, {observed.shape[1]}), "
                         f"but got {replicated.shape}.")
    if not 0.0 < interval < 1.0:
        raise ValueError(f"interval must lie in (0, 1), but got {interval}.")
    n_cells, n_genes = observed.shape
    genes = np.asarray(gene_names if gene_names is not None else [str(g) for g in range(n_genes)], dtype=object)
    cells = np.asarray(cell_names if cell_names is not None else [str(c) for c in range(n_cells)], dtype=object)
    replicated = replicated.astype(np.float32)
    frames = []

    def add(statistic, values, **items):
        frame = pd.DataFrame({"statistic": statistic, "perturbation": None, "gene": None, "cell": None, **items})
        frames.append(frame.assign(**values))

    add("gene_mean", _interval(observed.mean(0), replicated.mean(1), interval), gene=genes)
    add("gene_variance", _interval(observed.var(0, ddof=1) if n_cells > 1 else np.zeros(n_genes),
                                   replicated.var(1, ddof=1) if n_cells > 1 else np.zeros((len(replicated), n_genes)),
                                   interval), gene=genes)
    add("gene_zero_fraction", _interval((observed == 0).mean(0), (replicated == 0).mean(1), interval), gene=genes)
    add("cell_library_size", _interval(observed.sum(1), replicated.sum(2), interval), cell=cells,
        perturbation=None if labels is None else np.asarray(labels, dtype=object))
    if labels is not None:
        labels = np.asarray(labels, dtype=str)
        if len(labels) != n_cells:
            raise ValueError(f"labels must have one entry per cell ({n_cells}), but got {len(labels)}.")
        groups, codes = np.unique(labels, return_inverse=True)
        if control is not None and control in groups and len(groups) > 1:
            reference = int(np.flatnonzero(groups == control)[0])
            shift_obs = _log_normalized_means(observed, codes, len(groups))
            shift_rep = np.stack([_log_normalized_means(r, codes, len(groups)) for r in replicated])
            shift_obs = shift_obs - shift_obs[reference]
            shift_rep = shift_rep - shift_rep[:, reference:reference + 1]
            keep = np.arange(len(groups)) != reference
            add("perturbation_shift",
                _interval(shift_obs[keep].ravel(), shift_rep[:, keep].reshape(len(replicated), -1), interval),
                perturbation=np.repeat(groups[keep].astype(object), n_genes), gene=np.tile(genes, keep.sum()))
    return pd.concat(frames, ignore_index=True)
