"""Predictions under interventions: new cells for any combination of known perturbations, and
counterfactuals of observed cells under another perturbation.

Both go through the generative model's pieces: effective shifts drawn from the guide (masks
sampled, one draw of the global sites per cell), ``z = shift + noise``, then counts from the
decoder and the count likelihood.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import anndata
import numpy as np
import pandas as pd
import pyro
import torch

from .data import encode_perturbations
from .model import cell_shifts, count_distribution
from .shifts import draw_shifts, sample_cell_shifts
from .train import param_scope

__all__ = ["predict", "counterfactual"]


def _decode(svae, z: torch.Tensor, batch: Optional[torch.Tensor], library: torch.Tensor) -> torch.Tensor:
    """Counts ``[..., n_cells, n_genes]`` from ``z [..., n_cells, K]`` (call inside ``param_scope``)."""
    shape = z.shape[:-1]
    flat_batch = None if batch is None else batch.expand(shape).reshape(-1)
    log_proportions, gate_logits = svae.nets.decoder(z.reshape(-1, z.shape[-1]), flat_batch)
    reshape = (lambda t: None if t is None else t.reshape(shape + (-1,)))  # noqa: E731
    dispersion = None if svae.config.likelihood == "poisson" else pyro.param("dispersion")
    return count_distribution(reshape(log_proportions), reshape(gate_logits), library.clamp(min=1.0), dispersion,
                              svae.config.likelihood).sample()


def _encode_labels(svae, labels: Sequence[str]) -> np.ndarray:
    c = svae.config
    try:
        return encode_perturbations(list(labels), svae.perturbation_names, c.control, c.separator)
    except ValueError as err:
        raise ValueError(f"{err} Expected labels made of the model's perturbations (joined by {c.separator!r}) "
                         f"or {c.control!r}.") from None


def _batch_codes(svae, batch, n: int, rng: np.random.Generator) -> Optional[np.ndarray]:
    if not svae.batch_names:
        if batch is not None:
            raise ValueError(f"batch={batch!r} given, but the model was fitted without batches.")
        return None
    if batch is None:  # spread the cells over the training batches
        return rng.integers(len(svae.batch_names), size=n)
    if batch not in svae.batch_names:
        raise ValueError(f"batch={batch!r} is not one of the model's batches {list(svae.batch_names)}.")
    return np.full(n, list(svae.batch_names).index(batch))


def _library_sizes(svae, library, n: int, rng: np.random.Generator) -> np.ndarray:
    if library is None:
        if svae.adata is None:
            raise ValueError("library=None draws library sizes from the training cells, which a loaded model "
                             "does not keep: pass library (a number or an array of library sizes).")
        library = svae._read(svae.adata).library
    library = np.atleast_1d(np.asarray(library, dtype=np.float32))
    if (library <= 0).any() or not np.isfinite(library).all():
        raise ValueError("library sizes must be positive and finite.")
    return library if len(library) == n else rng.choice(library, size=n)


def predict(svae, perturbations: Union[str, Sequence[str]], n_cells: int = 100, batch: Optional[str] = None,
            library=None, seed: Optional[int] = None) -> anndata.AnnData:
    """See :meth:`pyro_svae.SVAE.predict`."""
    labels = [perturbations] if isinstance(perturbations, str) else list(perturbations)
    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, but got {n_cells}.")
    rng = np.random.default_rng(seed)
    if seed is not None:
        pyro.set_rng_seed(seed)
    cell_labels = np.repeat(np.asarray(labels, dtype=object), n_cells)
    codes = _encode_labels(svae, cell_labels)
    n = len(cell_labels)
    batch_codes = _batch_codes(svae, batch, n, rng)
    library_sizes = _library_sizes(svae, library, n, rng)
    device = svae.device
    draws = draw_shifts(svae, n)  # one draw of the global sites per cell
    with param_scope(svae.params), torch.no_grad():
        shift = sample_cell_shifts(draws, torch.as_tensor(codes, device=device))
        z = shift + torch.randn_like(shift)  # [n, K]
        b = None if batch_codes is None else torch.as_tensor(batch_codes, device=device)
        counts = _decode(svae, z, b, torch.as_tensor(library_sizes, device=device))
    obs = pd.DataFrame({svae.config.perturbation_key: pd.Categorical(cell_labels, categories=list(dict.fromkeys(labels))),
                        "library_size": library_sizes}, index=[f"predicted{i}" for i in range(n)])
    if batch_codes is not None:
        obs[svae.config.batch_key or "batch"] = np.asarray(svae.batch_names, dtype=object)[batch_codes]
    result = anndata.AnnData(X=counts.cpu().numpy().astype(np.float32), obs=obs,
                             var=pd.DataFrame(index=list(svae.gene_names)))
    result.obsm["z"] = z.cpu().numpy()
    result.obsm["shift"] = shift.cpu().numpy()
    return result


def counterfactual(svae, adata, perturbation: str, num_samples: int = 10, seed: Optional[int] = None,
                   batch_size: int = 1024) -> np.ndarray:
    """See :meth:`pyro_svae.SVAE.counterfactual`."""
    from .train import DataOnDevice

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, but got {num_samples}.")
    if seed is not None:
        pyro.set_rng_seed(seed)
    screen = svae._read(adata)
    target = torch.as_tensor(_encode_labels(svae, [perturbation]), device=svae.device)  # [1, M]
    draws = draw_shifts(svae, num_samples)
    # the masks of each draw of the global sites, sampled once and shared by all cells: [S, P, K]
    shifts = draws.slab if draws.inclusion is None else draws.slab * torch.bernoulli(draws.inclusion)
    data = DataOnDevice(screen, svae.device)
    out = np.empty((num_samples, screen.n_cells, screen.n_genes), dtype=np.int32)
    with param_scope(svae.params), torch.no_grad():
        for start in range(0, screen.n_cells, batch_size):
            index = np.arange(start, min(start + batch_size, screen.n_cells))
            batch = data.minibatch(index)
            loc, scale = svae.nets.encoder(batch["counts"], batch["batch"])
            z = torch.distributions.Normal(loc, scale).sample((num_samples,))  # [S, B, K] abduction
            # per draw s of the globals: remove the cell's own shift, add that of `perturbation`
            own = cell_shifts(shifts, batch["perturbations"])  # [S, B, K]
            new = cell_shifts(shifts, target.expand(len(index), -1))
            counts = _decode(svae, z - own + new, batch["batch"], batch["library"])
            out[:, index] = counts.round().cpu().numpy().astype(np.int32)
    return out

