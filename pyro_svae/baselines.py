"""Pseudo-bulk expression changes and the simple baselines a perturbation model must beat.

Expression is log-normalised per cell (``log1p`` of counts scaled to ``target_sum`` = 10,000 per
cell, counts per 10,000) and averaged over the cells of each label: the pseudo-bulk. A
perturbation's *change* is its pseudo-bulk minus the control's. Every baseline returns a
predicted change ``[perturbations x genes]`` (a ``pandas.DataFrame``, one row per held-out
perturbation it applies to, columns the genes); :func:`pyro_svae.evaluation.evaluate` scores them
beside the model. The baselines follow Ahlmann-Eltze, Huber & Anders (Nature Methods 2025) and
Systema (Vinas Torne et al., Nature Biotechnology 2025): predicting no change, the mean change of
the training perturbations, and the sum of the members' changes for a combination are hard to beat.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["TARGET_SUM", "read_counts", "stack_rows", "log_normalise", "pseudobulk", "changes", "members",
           "no_change", "training_mean", "k_cell_mean", "additive", "linear", "split_half"]

#: Counts per cell after normalisation (counts per 10,000), before ``log1p``.
TARGET_SUM = 1e4


def read_counts(adata, name: str, key: str, layer: Optional[str], genes: Sequence[str]):
    """The counts ``[n_cells, len(genes)]`` (CSR or dense, the columns of ``genes``, in that order)
    and the labels ``[n_cells]`` (``obs[key]`` as str) of ``adata``, which is not modified.
    A missing column, layer or gene raises ``KeyError`` naming it; ``name`` is the argument's name."""
    if adata is None or not hasattr(adata, "obs"):
        raise TypeError(f"Expected {name} to be an AnnData, but got {type(adata).__name__}.")
    if key not in adata.obs.columns:
        raise KeyError(f"Expected a column {key!r} in {name}.obs (the perturbation labels), but got columns "
                       f"{list(adata.obs.columns)}.")
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"Expected a layer {layer!r} in {name}.layers, but got {list(adata.layers.keys())}.")
    index = pd.Index(adata.var_names).get_indexer(list(genes))
    if (index < 0).any():
        missing = [g for g, i in zip(genes, index) if i < 0]
        raise KeyError(f"Expected {name} to have the model's {len(genes)} genes, but {len(missing)} are missing: "
                       f"{missing[:5]}.")
    matrix = adata.X if layer is None else adata.layers[layer]
    counts = matrix if np.array_equal(index, np.arange(adata.n_vars)) else matrix[:, index]
    return (sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts)), adata.obs[key].astype(str).to_numpy()


def stack_rows(a, b):
    """Rows of ``a`` then ``b`` (CSR if either is sparse)."""
    if sp.issparse(a) or sp.issparse(b):
        return sp.vstack([sp.csr_matrix(a), sp.csr_matrix(b)], format="csr")
    return np.vstack([a, b])


def log_normalise(counts, target_sum: float = TARGET_SUM) -> np.ndarray:
    """``log1p(counts / library * target_sum)`` of ``counts [n_cells, n_genes]`` (dense or sparse).

    Returns a dense float64 ``[n_cells, n_genes]``; a cell without counts stays all zeros.
    """
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    counts = counts.astype(np.float64)
    library = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts * (target_sum / np.where(library > 0, library, 1.0)))


def pseudobulk(counts, labels: Sequence[str], genes: Optional[Sequence[str]] = None,
               target_sum: float = TARGET_SUM, chunk_size: int = 4096) -> pd.DataFrame:
    """Mean log-normalised expression of the cells of each label.

    Parameters
    ----------
    counts : array or scipy-sparse matrix
        ``[n_cells, n_genes]`` raw counts, read in row chunks of ``chunk_size``.
    labels : sequence of str
        ``[n_cells]`` the label (perturbation) of each cell.
    genes : sequence of str, optional
        ``[n_genes]`` column names of the result.

    Returns
    -------
    pandas.DataFrame
        ``[n_labels, n_genes]``, one row per label (sorted), index named ``"perturbation"``.
    """
    labels = np.asarray(labels).astype(str)
    if labels.shape != (counts.shape[0],):
        raise ValueError(f"Expected {counts.shape[0]} labels (one per cell), but got shape {labels.shape}.")
    groups, codes = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(groups), counts.shape[1]))
    for start in range(0, counts.shape[0], chunk_size):
        block = log_normalise(counts[start:start + chunk_size], target_sum)
        rows = codes[start:start + len(block)]
        sums += sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(len(groups), len(rows))) @ block
    n = np.bincount(codes, minlength=len(groups))
    return pd.DataFrame(sums / n[:, None], index=pd.Index(groups, name="perturbation"),
                        columns=None if genes is None else list(genes))


def changes(bulk: pd.DataFrame, control: str) -> pd.DataFrame:
    """Each label's pseudo-bulk minus the control's: ``[n_labels - 1, n_genes]`` (control dropped)."""
    if control not in bulk.index:
        raise ValueError(f"Expected a row for control={control!r} in the pseudo-bulk, but got rows "
                         f"{list(bulk.index)[:10]}.")
    return bulk.drop(index=control) - bulk.loc[control]


def members(label: str, separator: Optional[str] = "+") -> list:
    """The perturbations a label is made of: ``"A+B"`` -> ``["A", "B"]``."""
    return label.split(separator) if separator else [label]


def _frame(values, index, columns) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(values, dtype=np.float64).reshape(len(index), len(columns)),
                        index=pd.Index(list(index), name="perturbation"), columns=list(columns))


def no_change(perturbations: Sequence[str], genes: Sequence[str]) -> pd.DataFrame:
    """The ``control`` baseline: no change, ``[perturbations x genes]`` of zeros."""
    return _frame(np.zeros((len(perturbations), len(genes))), perturbations, genes)


def training_mean(train_changes: pd.DataFrame, perturbations: Sequence[str]) -> pd.DataFrame:
    """The mean observed change of the training perturbations (each weighs the same), for every
    held-out perturbation: ``train_changes [n_train x genes]`` -> ``[perturbations x genes]``."""
    if train_changes.empty:
        return _frame(np.zeros((0, train_changes.shape[1])), [], train_changes.columns)
    mean = train_changes.to_numpy().mean(axis=0)
    return _frame(np.tile(mean, (len(perturbations), 1)), perturbations, train_changes.columns)


def k_cell_mean(seen_changes: pd.DataFrame, perturbations: Sequence[str]) -> pd.DataFrame:
    """Few-shot: the change measured on the few cells seen of each perturbation (the cells a model
    is transferred on). Rows of ``seen_changes [n_seen x genes]`` for the ``perturbations`` it has."""
    keep = [p for p in perturbations if p in seen_changes.index]
    return _frame(seen_changes.loc[keep].to_numpy(), keep, seen_changes.columns)


def additive(known_changes: pd.DataFrame, perturbations: Sequence[str], separator: Optional[str] = "+"):
    """For a combination ``"A+B"``, the sum of its members' observed changes (rows of
    ``known_changes [n_known x genes]``); only combinations whose members are all known."""
    keep = [p for p in perturbations
            if len(members(p, separator)) > 1 and all(m in known_changes.index for m in members(p, separator))]
    values = [known_changes.loc[members(p, separator)].to_numpy().sum(axis=0) for p in keep]
    return _frame(values if keep else np.zeros((0, known_changes.shape[1])), keep, known_changes.columns)


def linear(train_changes: pd.DataFrame, perturbations: Sequence[str], n_components: int = 10,
           ridge: float = 0.1) -> pd.DataFrame:
    """The linear baseline of Ahlmann-Eltze et al. (2025), for perturbations named like a gene.

    As ``benchmark/src/run_linear_perturbation_prediction.R`` of the repository
    ``const-ae/linear_perturbation_prediction-Paper``: ``Y [genes x T]`` holds the observed changes
    of the ``T`` training perturbations whose label is a gene (a column of ``train_changes``); the
    gene embedding ``E [genes x k]`` is the first ``k = min(n_components, T, genes)`` principal
    component scores of ``Y`` with genes as observations (each column centred, as ``prcomp``); a
    perturbation of gene ``g`` is described by ``x_g = [1, E[g]]``, and ``Y ~ B X^T`` is fitted
    by ridge regression, ``B = Y X (X^T X + T ridge^4 D)^-1`` with ``D = diag(0, 1, ..., 1)`` (the
    intercept unpenalised; the penalty of ``lemur:::ridge_regression``, solved as least squares on
    the augmented system). A held-out perturbation of gene ``g`` is predicted as ``B x_g``.

    Returns
    -------
    pandas.DataFrame
        ``[n, genes]``: the ``perturbations`` named like a gene; empty when fewer than 2
        training perturbations are.
    """
    genes = list(train_changes.columns)
    position = {str(g): i for i, g in enumerate(genes)}
    train = [p for p in train_changes.index if p in position]
    targets = [p for p in perturbations if p in position]
    if len(train) < 2 or not targets:
        return _frame(np.zeros((0, len(genes))), [], genes)
    y = train_changes.loc[train].to_numpy().T  # [G, T]
    u, s, _ = np.linalg.svd(y - y.mean(axis=0), full_matrices=False)
    k = min(n_components, len(s))
    embedding = u[:, :k] * s[:k]  # [G, k]: PC scores of the genes
    x = np.column_stack([np.ones(len(train)), embedding[[position[p] for p in train]]])  # [T, 1 + k]
    penalty = np.sqrt(len(train)) * ridge**2 * np.diag([0.0] + [1.0] * k)
    beta = np.linalg.lstsq(np.vstack([x, penalty]), np.vstack([y.T, np.zeros((k + 1, len(genes)))]), rcond=None)[0]
    x_new = np.column_stack([np.ones(len(targets)), embedding[[position[p] for p in targets]]])
    return _frame(x_new @ beta, targets, genes)


def split_half(counts, labels: Sequence[str], control: str, genes: Optional[Sequence[str]] = None,
               seed: int = 0, target_sum: float = TARGET_SUM):
    """The ceiling: each label's cells (the control's too) shuffled and split into two disjoint
    halves of ``floor(n / 2)`` cells (an odd cell left out), as cell-eval's ``compute_ceiling``
    (``src/cell_eval/_evaluator.py`` of ``ArcInstitute/cell-eval`` 0.8.2). The change measured on
    the first half is the prediction, to be scored against the second half.

    Parameters
    ----------
    counts : array or scipy-sparse matrix
        ``[n_cells, n_genes]`` raw counts of the held-out perturbations' and the control's cells.
    labels : sequence of str
        ``[n_cells]``; labels with fewer than 2 cells are left out.

    Returns
    -------
    predicted : pandas.DataFrame
        ``[perturbations x genes]`` the change of the first halves.
    second : numpy.ndarray
        ``[n_cells]`` bool, the cells of the second halves (the observation to score against).
    """
    labels = np.asarray(labels).astype(str)
    rng = np.random.default_rng(seed)
    first, second = np.zeros(len(labels), bool), np.zeros(len(labels), bool)
    for label in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        half = len(cells) // 2
        first[cells[:half]], second[cells[half:2 * half]] = True, True
    if not (first & (labels == control)).any():
        raise ValueError(f"Expected at least 2 cells of control={control!r} to split, but got "
                         f"{int((labels == control).sum())}.")
    return changes(pseudobulk(counts[first], labels[first], genes, target_sum), control), second
