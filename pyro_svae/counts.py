"""The count matrix of a screen, validated: dense, scipy-sparse (kept sparse) or on disk (a backed
AnnData, read in chunks); rows densified on the device minibatch by minibatch."""

from __future__ import annotations

from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["BACKED_CHUNK", "BackedCounts", "count_matrix", "counts_to_tensor"]


#: Rows read at a time from a backed (on-disk) count matrix.
BACKED_CHUNK = 10_000


class BackedCounts:
    """Rows of an on-disk count matrix (``read_h5ad(..., backed="r")``), read on demand as float32.

    Only what a minibatch needs is in memory: ``counts[index]`` reads the rows ``index`` (any
    order) and returns a CSR matrix (sparse on disk) or a dense array.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        self.shape = tuple(dataset.shape)

    def __getitem__(self, index):
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        unique, inverse = np.unique(index, return_inverse=True)
        rows = self.dataset[unique]  # on-disk formats read strictly increasing rows
        rows = sp.csr_matrix(rows, dtype=np.float32) if sp.issparse(rows) else np.asarray(rows, dtype=np.float32)
        return rows if len(unique) == len(index) and np.all(unique == index) else rows[inverse]

    def chunks(self):
        """``(start, rows)`` over the whole matrix, :data:`BACKED_CHUNK` rows at a time."""
        for start in range(0, self.shape[0], BACKED_CHUNK):
            yield start, self[np.arange(start, min(start + BACKED_CHUNK, self.shape[0]))]


def _check_values(values: np.ndarray, where: str, allow_non_integer: bool, chunk: int = 2 ** 23) -> None:
    if values.size > chunk:  # bounded temporaries (np.round of 100M values alone would take 400 MB)
        flat = values.reshape(-1)
        for start in range(0, flat.size, chunk):
            _check_values(flat[start:start + chunk], where, allow_non_integer, chunk)
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{where} holds NaN or infinite values; expected finite counts.")
    if values.size and values.min() < 0:
        raise ValueError(f"{where} holds negative values (min {values.min():g}); expected counts >= 0.")
    if not allow_non_integer and values.size and not np.all(values == np.round(values)):
        example = values[values != np.round(values)][0]
        raise ValueError(
            f"{where} holds non-integer values (e.g. {example:g}); expected raw counts. "
            "Pass allow_non_integer=True if this is intended (e.g. ambient-corrected counts)."
        )


def _backed_count_matrix(dataset, where: str, allow_non_integer: bool):
    """Validate an on-disk matrix chunk by chunk; returns it wrapped and the library sizes."""
    counts = BackedCounts(dataset)
    library = np.zeros(counts.shape[0], dtype=np.float32)
    for start, rows in counts.chunks():
        _check_values(rows.data if sp.issparse(rows) else rows, where, allow_non_integer)
        library[start:start + rows.shape[0]] = np.asarray(rows.sum(axis=1)).reshape(-1)
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(f"{where} has shape {counts.shape}; expected at least one cell and one gene.")
    if not library.any():
        raise ValueError(f"{where} is all zeros; expected counts with at least one non-zero value.")
    return counts, library


def _is_backed(matrix) -> bool:
    return not isinstance(matrix, np.ndarray) and not sp.issparse(matrix) and hasattr(matrix, "shape") \
        and (hasattr(matrix, "to_memory") or type(matrix).__module__.startswith("h5py"))


def count_matrix(adata, layer: Optional[str], allow_non_integer: bool):
    """The validated count matrix of ``adata`` (``X`` or ``layers[layer]``) and each cell's library size."""
    if layer is None:
        matrix, where = adata.X, "adata.X"
    else:
        if layer not in adata.layers:
            raise KeyError(
                f"layer={layer!r} is not in adata.layers; available layers: {list(adata.layers.keys())}."
            )
        matrix, where = adata.layers[layer], f"adata.layers[{layer!r}]"
    if matrix is None:
        raise ValueError(f"{where} is empty (None); expected a cells x genes count matrix.")
    if _is_backed(matrix):  # read_h5ad(..., backed="r"): stays on disk
        return _backed_count_matrix(matrix, where, allow_non_integer)
    # Read-only from here on: a CSR float32 or float32 array is used as it is, not copied (a
    # million-cell screen would otherwise be held twice); other formats and dtypes are converted.
    if sp.issparse(matrix):
        matrix = sp.csr_matrix(matrix, dtype=np.float32)
        values = matrix.data
    else:
        matrix = np.asarray(matrix, dtype=np.float32)
        values = matrix
    _check_values(values, where, allow_non_integer)
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{where} has shape {matrix.shape}; expected at least one cell and one gene.")
    if (sp.issparse(matrix) and matrix.nnz == 0) or (not sp.issparse(matrix) and not values.any()):
        raise ValueError(f"{where} is all zeros; expected counts with at least one non-zero value.")
    return matrix, np.asarray(matrix.sum(axis=1), dtype=np.float32).reshape(-1)


def counts_to_tensor(counts, index: np.ndarray, device) -> torch.Tensor:
    """Densify the rows ``index`` of a dense, CSR or backed count matrix: ``[len(index), n_genes]``."""
    rows = counts[index]
    if sp.issparse(rows):
        rows = rows.toarray()
    return torch.as_tensor(rows, dtype=torch.float32, device=device)
