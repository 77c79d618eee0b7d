"""Held-out likelihood: the importance-weighted ELBO (IWELBO, Burda et al. 2016) per cell.

For cell ``x`` with ``S`` importance samples ``(g_s, z_s) ~ q(g) q(z | x)``::

    IWELBO(x) = log (1/S) sum_s p(x | z_s) p(z_s | g_s) / q(z_s | x)

a lower bound on ``log E_q(g)[p(x | g)]``, the posterior predictive log-likelihood of a held-out
cell, that tightens as ``S`` grows (``S = 1`` is an ELBO). ``g`` are the prior's global sites, drawn
from their guide once per importance sample and shared by all cells; masks that a prior
integrates out are summed over exactly (:func:`~pyro_svae.shifts.log_prior_z`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch

from .model import count_distribution
from .shifts import ShiftDraws, draw_shifts, log_prior_z
from .train import DataOnDevice, param_scope

__all__ = ["marginal_log_likelihood", "iwelbo"]

#: Bound on ``samples x cells x genes`` values held at once.
_MAX_ELEMENTS = 2 ** 24


def iwelbo(svae, batch: dict, draws: ShiftDraws) -> torch.Tensor:
    """IWELBO of each cell of a minibatch with the importance samples of ``draws``: ``[B]``."""
    nets = svae.nets
    n_samples, n_cells = draws.slab.shape[0], batch["library"].shape[0]
    loc, scale = nets.encoder(batch["counts"], batch["batch"])
    q = dist.Normal(loc, scale)
    dispersion = None if svae.config.likelihood == "poisson" else pyro.param("dispersion")
    chunk = max(1, _MAX_ELEMENTS // max(1, n_cells * batch["counts"].shape[-1]))
    log_weights = []
    for start in range(0, n_samples, chunk):
        part = ShiftDraws(*(None if t is None else t[start:start + chunk] for t in draws))
        s = part.slab.shape[0]
        z = q.sample((s,))  # [s, B, K]
        cell_batch = None if batch["batch"] is None else batch["batch"].repeat(s)
        log_proportions, gate_logits = nets.decoder(z.reshape(s * n_cells, -1), cell_batch)
        reshape = (lambda t: None if t is None else t.reshape(s, n_cells, -1))  # noqa: E731
        likelihood = count_distribution(reshape(log_proportions), reshape(gate_logits),
                                        batch["library"].clamp(min=1.0), dispersion, svae.config.likelihood)
        log_lik = likelihood.log_prob(batch["counts"]).sum(-1)  # [s, B]
        log_weights.append(log_lik + log_prior_z(z, part, batch["perturbations"]) - q.log_prob(z).sum(-1))
    return torch.logsumexp(torch.cat(log_weights), dim=0) - np.log(n_samples)


def marginal_log_likelihood(svae, adata=None, n_samples: int = 100, by: Optional[str] = None,
                            batch_size: int = 256, seed: Optional[int] = None):
    """See :meth:`pyro_svae.SVAE.marginal_log_likelihood`."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, but got {n_samples}.")
    adata = svae.adata if adata is None else adata
    screen = svae._read(adata)
    if by is not None and by not in adata.obs.columns:
        raise KeyError(f"by={by!r} is not a column of adata.obs; available columns: {list(adata.obs.columns)}.")
    if seed is not None:
        pyro.set_rng_seed(seed)
    draws = draw_shifts(svae, n_samples)
    data = DataOnDevice(screen, svae.device)
    values = []
    with param_scope(svae.params), torch.no_grad():
        for start in range(0, screen.n_cells, batch_size):
            batch = data.minibatch(np.arange(start, min(start + batch_size, screen.n_cells)))
            values.append(iwelbo(svae, batch, draws).cpu())
    values = torch.cat(values).double().numpy()
    if by is None:
        return float(values.mean())
    return (pd.Series(values, index=adata.obs_names).groupby(adata.obs[by].astype(str).to_numpy()).mean()
            .rename("marginal_log_likelihood"))
