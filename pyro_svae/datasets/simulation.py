"""Simulated screens: the paper's setting (Lopez et al. 2023, Sec. 5), corrected and seeded."""

from __future__ import annotations

from typing import Optional

import anndata
import numpy as np
import pandas as pd

__all__ = ["simulate"]


def _injective_decoder(rng: np.random.Generator, n_latent: int, n_genes: int, n_hidden: int, slope: float):
    """Weights of a leaky-ReLU MLP that is injective (full column rank layers, Lachapelle et al.)."""
    sizes = [n_latent, n_hidden, n_hidden, n_hidden, n_genes]
    weights = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        w, _ = np.linalg.qr(rng.normal(size=(max(n_in, n_out), min(n_in, n_out))))
        w = w if n_in >= n_out else w.T  # orthonormal rows or columns: injective when n_in <= n_out
        w = w.reshape(n_in, n_out) * np.sqrt(2.0 / (1 + slope**2)) * np.sqrt(2.0 / (n_in + n_out))
        weights.append(w)
    return weights


def _decode(z: np.ndarray, weights, slope: float) -> np.ndarray:
    h = z
    for w in weights[:-1]:
        h = h @ w
        h = np.maximum(slope * h, h)
    return h @ weights[-1]


def simulate(
    n_perturbations: int = 20,
    n_latent: int = 5,
    n_genes: int = 100,
    n_cells_per_perturbation: int = 150,
    n_control: int = 300,
    max_targets: int = 3,
    shift_size: float = 5.0,
    library_size: float = 2000.0,
    dispersion: Optional[float] = 10.0,
    n_hidden: int = 40,
    seed: int = 0,
) -> anndata.AnnData:
    """Simulate a perturbation screen with sparse mechanism shifts (Lopez et al. 2023, Sec. 5).

    Each perturbation targets 1 to ``max_targets`` distinct latents, shifting each by
    ``+-N(shift_size, 0.5)``; cells have ``z ~ Normal(delta[a], I)``; an injective leaky-ReLU
    MLP maps ``z`` to gene logits, normalised by a softmax **over genes** (the reference code
    normalises over cells); counts are negative binomial with mean ``library * softmax`` and
    inverse dispersion ``dispersion`` (``None``: Poisson). Library sizes are log-normal around
    ``library_size``. Everything is drawn from one seeded generator.

    Returns
    -------
    anndata.AnnData
        ``X`` ``[n_cells, n_genes]`` float32 counts; ``obs["perturbation"]`` (``"control"`` or
        ``"p00"``, ``"p01"``...); ``obsm["z_true"]`` ``[n_cells, n_latent]``; ``uns["true_targets"]``
        ``[n_perturbations, n_latent]`` bool and ``uns["true_shifts"]`` (float), rows in the order of
        ``uns["perturbation_names"]``.
    """
    if not 1 <= max_targets <= n_latent:
        raise ValueError(f"Expected 1 <= max_targets <= n_latent={n_latent}, but got {max_targets}.")
    rng = np.random.default_rng(seed)
    width = len(str(n_perturbations - 1))
    names = [f"p{i:0{width}d}" for i in range(n_perturbations)]  # zero-padded: sorted order = index order
    targets = np.zeros((n_perturbations, n_latent), dtype=bool)
    for p in range(n_perturbations):
        k = rng.integers(1, max_targets + 1)
        targets[p, rng.choice(n_latent, size=k, replace=False)] = True
    sign = rng.choice([-1.0, 1.0], size=targets.shape)
    shifts = targets * sign * rng.normal(shift_size, 0.5, size=targets.shape)

    labels = np.array(["control"] * n_control + [n for n in names for _ in range(n_cells_per_perturbation)])
    index = np.array([-1] * n_control + [p for p in range(n_perturbations) for _ in range(n_cells_per_perturbation)])
    mean = np.where(index[:, None] >= 0, shifts[np.maximum(index, 0)], 0.0)
    z = mean + rng.normal(size=mean.shape)

    weights = _injective_decoder(rng, n_latent, n_genes, max(n_hidden, n_latent), slope=0.2)
    logits = _decode(z, weights, slope=0.2)
    logits /= logits.std()
    proportions = np.exp(logits - logits.max(axis=1, keepdims=True))
    proportions /= proportions.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(library_size), 0.2, size=(len(z), 1))
    mu = library * proportions
    rate = mu if dispersion is None else rng.gamma(dispersion, mu / dispersion)
    counts = rng.poisson(rate).astype(np.float32)

    order = rng.permutation(len(z))
    adata = anndata.AnnData(
        X=counts[order],
        obs=pd.DataFrame({"perturbation": pd.Categorical(labels[order])}, index=[f"cell{i}" for i in range(len(z))]),
        var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)]),
    )
    adata.obsm["z_true"] = z[order].astype(np.float32)
    adata.uns["true_targets"] = targets
    adata.uns["true_shifts"] = shifts.astype(np.float32)
    adata.uns["perturbation_names"] = np.array(names)
    return adata
