"""Held-out likelihood: the importance-weighted ELBO (IWELBO, Burda et al. 2016) per cell.

For cell ``x`` with ``S`` importance samples ``(g_s, z_s) ~ q(g) q(z | x)``::

    IWELBO(x) = log (1/S) sum_s p(x | z_s) p(z_s | g_s) / q(z_s | x)

a lower bound on ``log E_q(g)[p(x | g)]``, the posterior predictive log-likelihood of a held-out
cell, that tightens as ``S`` grows (``S = 1`` is an ELBO). ``g`` are the prior's global sites, drawn
from their guide once per importance sample and shared by all cells; masks that a prior
integrates out are summed over exactly (:func:`log_prior_z`).
"""

from __future__ import annotations

import itertools

import numpy as np
import pyro.distributions as dist
import torch

from .factory import Components
from .guide import encode
from .likelihoods import count_distribution, dispersion_param
from .model import cell_shifts
from .posterior import GlobalDraws

__all__ = ["iwelbo", "log_prior_z", "MAX_ELEMENTS"]

#: Bound on ``samples x cells x genes`` values held at once.
MAX_ELEMENTS = 2 ** 24


def log_prior_z(z: torch.Tensor, draws: GlobalDraws, perturbations: torch.Tensor) -> torch.Tensor:
    """``log p(z | shifts)`` for ``z [S, B, K]`` and draws of ``[S, P, K]``: ``[S, B]``.

    With inclusion probabilities, the masks of the cell's perturbations are summed over exactly
    (``2^M`` configurations for ``M`` members): ``p(z_k) = sum_b prod_m pi^b_m (1 - pi)^(1 - b_m)
    N(z_k; sum_m b_m slab_m, 1)``. Without, ``N(z; sum of shifts, I)``, minus ``variance / 2`` per
    latent for moments-only priors (the bound the model trains on).
    """
    if draws.inclusion is None:
        log_p = dist.Normal(cell_shifts(draws.slab, perturbations), 1.0).log_prob(z).sum(-1)
        if draws.variance is not None:
            log_p = log_p - 0.5 * cell_shifts(draws.variance, perturbations).sum(-1)
        return log_p
    pad = draws.slab.new_zeros(draws.slab.shape[0], 1, draws.slab.shape[-1])
    slab = torch.cat([draws.slab, pad], dim=1)[:, perturbations]  # [S, B, M, K]
    inclusion = torch.cat([draws.inclusion, pad], dim=1)[:, perturbations]  # padding: never on
    log_on, log_off = torch.log(inclusion), torch.log1p(-inclusion)
    components = []
    for config in itertools.product((0.0, 1.0), repeat=perturbations.shape[-1]):
        b = z.new_tensor(config)[:, None]  # [M, 1]
        loc = (slab * b).sum(-2)
        log_weight = torch.where(b.bool(), log_on, log_off).sum(-2)
        components.append(log_weight + dist.Normal(loc, 1.0).log_prob(z))
    return torch.logsumexp(torch.stack(components), dim=0).sum(-1)


def _draws_slice(draws: GlobalDraws, start: int, stop: int) -> GlobalDraws:
    return GlobalDraws({}, *(None if t is None else t[start:stop] for t in draws[1:]))


def iwelbo(components: Components, batch: dict, draws: GlobalDraws) -> torch.Tensor:
    """IWELBO of each cell of a minibatch with the importance samples of ``draws``: ``[B]``.

    Call inside the model's param scope.
    """
    nets = components.nets
    n_samples, n_cells = draws.n_draws, batch["library"].shape[0]
    dispersion = dispersion_param(components.likelihood, nets.n_genes)
    chunk = max(1, MAX_ELEMENTS // max(1, n_cells * batch["counts"].shape[-1]))
    log_weights = []
    for start in range(0, n_samples, chunk):
        part = _draws_slice(draws, start, start + chunk)
        # q(z | x), or for a conjugate encoder q(z | x, delta) of each draw: [s, B, K]
        q = encode(nets, batch, part.delta).expand((part.n_draws, n_cells))
        z = q.sample()  # [s, B, K]
        counts = count_distribution(nets.decoder, components.likelihood, z, batch["batch"], batch["library"], dispersion)
        log_lik = counts.log_prob(batch["counts"]).sum(-1)  # [s, B]
        log_weights.append(log_lik + log_prior_z(z, part, batch["perturbations"]) - q.log_prob(z))
    return torch.logsumexp(torch.cat(log_weights), dim=0) - np.log(n_samples)
