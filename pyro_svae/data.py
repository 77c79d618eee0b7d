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

from .counts import BackedCounts, count_matrix, counts_to_tensor

__all__ = ["ScreenData", "BackedCounts", "read_screen", "encode_perturbations", "counts_to_tensor", "CONTROL_LIKE"]


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
                raise ValueError(f"Perturbation {name!r} is not one of the known perturbations "
                                 f"{list(perturbation_names)[:10]}{'...' if len(perturbation_names) > 10 else ''}; "
                                 "a fitted model adds perturbations it has not seen with SVAE.transfer(adata).")
            encoded[i, j] = lookup[name]
    return encoded[codes]


#: Labels that name unperturbed cells in public screens (matched ignoring case, "-", "_" and " ").
CONTROL_LIKE = ("control", "ctrl", "nontargeting", "nt", "ntc", "safetargeting", "scramble", "scrambled", "negative",
                "negctrl", "dmso", "vehicle", "unperturbed")


def _looks_like_control(label: str) -> bool:
    key = "".join(ch for ch in label.lower() if ch.isalnum())
    return key in CONTROL_LIKE or key.startswith(("nontargeting", "safetargeting", "negctrl"))


def _label_summary(labels: pd.Series) -> str:
    """The most frequent labels (controls are usually among them), and those that look like controls."""
    counts = labels.value_counts()
    top = [f"{label!r} ({n})" for label, n in counts.iloc[:8].items()]
    controls = [label for label in counts.index if _looks_like_control(str(label))]
    text = f"the most frequent labels (cells): {', '.join(top)}" + (", ..." if len(counts) > 8 else "")
    return text + (f"; labels that look like controls: {controls}" if controls else "")


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
    counts, library = count_matrix(adata, layer, allow_non_integer)
    labels = _labels(adata, perturbation_key, "perturbation_key")
    if require_control and control is not None and not (labels == control).any():
        raise ValueError(f"control={control!r} is not a label of adata.obs[{perturbation_key!r}]; "
                         f"{_label_summary(labels)}.")
    if control is None and perturbation_names is None:
        looks = sorted(label for label in labels.unique() if _looks_like_control(label))
        if looks:
            warnings.warn(f"control=None, but adata.obs[{perturbation_key!r}] has the label {looks[0]!r}, which looks "
                          f"like a control: its cells are fitted as a perturbation. Pass control={looks[0]!r} if they "
                          "are unperturbed.", UserWarning, stacklevel=3)
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
