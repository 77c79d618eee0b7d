"""Draws of the effective shifts from the guide, with Bernoulli masks sampled or summed over.

A prior that integrates its masks out (returns :class:`~pyro_svae.priors.ShiftMoments` with
``inclusion``) means ``delta = mask * slab`` with ``mask ~ Bernoulli(inclusion)`` and
``slab = mean / inclusion``. Training only needs the moments; simulating cells
(:func:`sample_cell_shifts`) samples the masks, and the marginal likelihood
(:func:`log_prior_z`) sums over them exactly.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Optional

import pyro.distributions as dist
import torch
from pyro import poutine

from .guide import prior_guide
from .model import cell_shifts
from .priors import ShiftMoments
from .train import param_scope

__all__ = ["ShiftDraws", "draw_shifts", "sample_cell_shifts", "log_prior_z"]


class ShiftDraws(NamedTuple):
    """``S`` guide draws of the shifts, each ``[S, P, K]``.

    ``slab`` is the shift when the target is on; ``inclusion`` the probability that it is on
    (``None``: ``slab`` is the effective shift itself); ``variance`` the mask variance of a prior
    returning ``ShiftMoments`` without ``inclusion`` (scored by its moments only), else ``None``.
    """

    slab: torch.Tensor
    inclusion: Optional[torch.Tensor] = None
    variance: Optional[torch.Tensor] = None


def draw_shifts(svae, num_samples: int) -> ShiftDraws:
    """``num_samples`` draws of the prior's sites from the guide, turned into shifts."""
    shape = (len(svae.perturbation_names), svae.config.n_latent)
    slabs, inclusions, variances = [], [], []
    with param_scope(svae.params), torch.no_grad():
        for _ in range(num_samples):
            guide_trace = poutine.trace(prior_guide).get_trace(svae.prior_sites, svae.prior, shape, svae.device)
            delta = poutine.replay(svae.prior, trace=guide_trace)(*shape)
            if isinstance(delta, ShiftMoments) and delta.inclusion is not None:
                on = delta.inclusion > 0
                slabs.append(torch.where(on, delta.mean / delta.inclusion.clamp(min=1e-30), torch.zeros_like(delta.mean)))
                inclusions.append(delta.inclusion)
            elif isinstance(delta, ShiftMoments):
                slabs.append(delta.mean)
                variances.append(delta.variance)
            else:
                slabs.append(delta)
    device = svae.device
    stack = (lambda xs: torch.stack(xs).to(device) if xs else None)  # noqa: E731
    return ShiftDraws(stack(slabs), stack(inclusions), stack(variances))


def sample_cell_shifts(draws: ShiftDraws, perturbations: torch.Tensor) -> torch.Tensor:
    """One shift per cell: draw ``s`` for cell ``s`` (``S == n_cells``), masks sampled. ``[B, K]``."""
    slab = draws.slab
    if draws.inclusion is not None:
        slab = slab * torch.bernoulli(draws.inclusion)
    index = torch.arange(len(perturbations), device=slab.device)
    padded = torch.cat([slab, slab.new_zeros(slab.shape[0], 1, slab.shape[-1])], dim=1)  # [S, P + 1, K]
    return padded[index[:, None], perturbations].sum(-2)


def log_prior_z(z: torch.Tensor, draws: ShiftDraws, perturbations: torch.Tensor) -> torch.Tensor:
    """``log p(z | shifts)`` for ``z [S, B, K]`` and draws ``[S, P, K]``: ``[S, B]``.

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
