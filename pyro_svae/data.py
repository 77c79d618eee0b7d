"""AnnData -> validated tensors.

Everything the model needs from an :class:`anndata.AnnData` is read and checked here, once,
at the boundary: the count matrix (dense or scipy-sparse, ``X`` or a layer), the perturbation
design (one label per cell; ``"A+B"`` means both ``A`` and ``B``), the optional batch, and the
observed library size. Errors name the key, what was expected and what arrived. The user's
AnnData is only read, never written.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

__all__ = ["ScreenData", "BackedCounts", "read_screen", "encode_perturbations", "counts_to_tensor"]


@dataclass(frozen=True)
class ScreenData:
    """A perturbation screen as arrays, validated.

    Attributes
    ----------
    counts : np.ndarray, scipy.sparse.csr_matrix or BackedCounts
        ``[n_cells, n_genes]`` raw counts, float32. Sparse input stays sparse (CSR); a backed
        AnnData's matrix stays on disk (:class:`BackedCounts`, rows read per minibatch).
    perturbations : np.ndarray
        ``[n_cells, max_members]`` int64 indices into ``perturbation_names``; the value
        ``n_perturbations`` pads (control cells hold only padding).
    batch : np.ndarray or None
        ``[n_cells]`` int64 batch index into ``batch_names``.
    library : np.ndarray
        ``[n_cells]`` float32 observed library size (total counts).
    """

    counts: object
    perturbations: np.ndarray
    batch: Optional[np.ndarray]
    library: np.ndarray
    gene_names: tuple
    perturbation_names: tuple
    batch_names: Optional[tuple]
    cell_names: tuple

    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def n_genes(self) -> int:
        return self.counts.shape[1]

    @property
    def n_perturbations(self) -> int:
        return len(self.perturbation_names)

    @property
    def n_batches(self) -> int:
        return 0 if self.batch_names is None else len(self.batch_names)


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


def _count_matrix(adata, layer: Optional[str], allow_non_integer: bool):
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


def encode_perturbations(
    labels: Sequence, perturbation_names: Sequence[str], control: Optional[str], separator: Optional[str] = "+"
) -> np.ndarray:
    """Encode labels as padded member indices.

    Returns ``[n_cells, max_members]`` int64; ``len(perturbation_names)`` is the padding value.
    An unknown member raises ``ValueError`` naming it.
    """
    lookup = {name: i for i, name in enumerate(perturbation_names)}
    pad = len(perturbation_names)
    # each distinct label is parsed once (a million cells carry a few thousand labels at most)
    codes, distinct = pd.factorize(np.asarray(labels, dtype=object), use_na_sentinel=False)
    members = [_members(label, control, separator) for label in distinct]
    width = max([1] + [len(m) for m in members])
    encoded = np.full((len(members), width), pad, dtype=np.int64)
    for i, names in enumerate(members):
        for j, name in enumerate(names):
            if name not in lookup:
                raise ValueError(f"Perturbation {name!r} is not one of the known perturbations {list(perturbation_names)[:10]}...")
            encoded[i, j] = lookup[name]
    return encoded[codes]


def _members(label: str, control: Optional[str], separator: Optional[str]) -> list:
    if control is not None and label == control:
        return []
    parts = label.split(separator) if separator else [label]
    return [p for p in parts if p and p != control]


def _labels(adata, key: str, what: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise KeyError(f"{what}={key!r} is not a column of adata.obs; available columns: {list(adata.obs.columns)}.")
    column = adata.obs[key]
    if column.isna().any():
        n = int(column.isna().sum())
        raise ValueError(f"adata.obs[{key!r}] has {n} missing (NaN) labels; expected a label for every cell.")
    return column.astype(str)


def _with_genes(adata, gene_names: Sequence[str]):
    genes = list(map(str, adata.var_names))
    if genes == list(gene_names):
        return adata
    missing = sorted(set(gene_names) - set(genes))
    if missing:
        raise ValueError(f"adata.var_names lack {len(missing)} of the model's {len(gene_names)} training genes "
                         f"(e.g. {missing[:5]}); expected the genes the model was fitted on.")
    if len(genes) != len(gene_names):
        extra = sorted(set(genes) - set(gene_names))
        raise ValueError(f"adata.var_names hold {len(extra)} genes the model was not fitted on (e.g. {extra[:5]}); "
                         "expected the training genes only: subset with adata[:, model.gene_names].")
    warnings.warn("adata.var_names are the training genes in another order; reordering by name.", stacklevel=4)
    return adata[:, list(gene_names)]


def read_screen(
    adata,
    perturbation_key: str = "perturbation",
    control: Optional[str] = "control",
    *,
    layer: Optional[str] = None,
    batch_key: Optional[str] = None,
    separator: Optional[str] = "+",
    allow_non_integer: bool = False,
    perturbation_names: Optional[Sequence[str]] = None,
    batch_names: Optional[Sequence[str]] = None,
    require_control: bool = True,
    gene_names: Optional[Sequence[str]] = None,
) -> ScreenData:
    """Read and validate a screen from an AnnData.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes raw counts in ``X`` or ``layers[layer]``.
    perturbation_key : str
        Column of ``adata.obs`` with one label per cell; ``control`` marks unperturbed cells and
        ``separator`` joins the members of a combination (``"A+B"``). ``control=None``: a screen
        without controls, every cell perturbed (the origin of the latent space is then only
        fixed by the prior, not by unperturbed cells).
    perturbation_names, batch_names : sequence of str, optional
        Fix the encoding (as when reading new data for a fitted model). By default the sorted
        labels seen in ``adata``.
    require_control : bool
        Raise if no cell carries the ``control`` label.
    gene_names : sequence of str, optional
        The genes a fitted model expects: ``adata`` must have them all (reordered by name, with a
        warning, if they come in another order).
    """
    if gene_names is not None:
        adata = _with_genes(adata, gene_names)
    counts, library = _count_matrix(adata, layer, allow_non_integer)
    labels = _labels(adata, perturbation_key, "perturbation_key")
    if require_control and control is not None and not (labels == control).any():
        seen = sorted(labels.unique())[:10]
        raise ValueError(
            f"control={control!r} is not a label of adata.obs[{perturbation_key!r}]; labels seen: {seen}."
        )
    if perturbation_names is None:
        members = {m for label in labels.unique() for m in _members(label, control, separator)}
        perturbation_names = sorted(members)
        if not perturbation_names:
            raise ValueError(f"adata.obs[{perturbation_key!r}] holds only control cells ({control!r}); "
                             "expected at least one perturbation.")
    perturbations = encode_perturbations(labels.to_numpy(), perturbation_names, control, separator)

    batch = None
    if batch_key is not None:
        batch_labels = _labels(adata, batch_key, "batch_key")
        if batch_names is None:
            batch_names = sorted(batch_labels.unique())
        lookup = {b: i for i, b in enumerate(batch_names)}
        unknown = sorted(set(batch_labels.unique()) - set(lookup))
        if unknown:
            raise ValueError(f"adata.obs[{batch_key!r}] has batches {unknown} not seen in training {list(batch_names)}.")
        batch = batch_labels.map(lookup).to_numpy().astype(np.int64)

    return ScreenData(
        counts=counts,
        perturbations=perturbations,
        batch=batch,
        library=library,
        gene_names=tuple(map(str, adata.var_names)),
        perturbation_names=tuple(perturbation_names),
        batch_names=None if batch_names is None else tuple(batch_names),
        cell_names=tuple(map(str, adata.obs_names)),
    )


def counts_to_tensor(counts, index: np.ndarray, device) -> torch.Tensor:
    """Densify the rows ``index`` of a dense, CSR or backed count matrix: ``[len(index), n_genes]``."""
    rows = counts[index]
    if sp.issparse(rows):
        rows = rows.toarray()
    return torch.as_tensor(rows, dtype=torch.float32, device=device)
