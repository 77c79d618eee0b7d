"""The generative model of sparse mechanism shift modeling (Lopez et al., CLeaR 2023)."""

from __future__ import annotations

from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from .likelihoods import count_distribution, dispersion_param, get_likelihood
from .nets import Networks
from .plates import prior_scope
from .priors import ShiftMoments

__all__ = ["CELLS_DIM", "model", "cell_shifts", "call_prior"]

CELLS_DIM = -1


def cell_shifts(delta: torch.Tensor, perturbations: torch.Tensor) -> torch.Tensor:
    """Sum the effective shifts of each cell's perturbations.

    ``delta`` is ``[..., n_perturbations, n_latent]``; ``perturbations`` is ``[n_cells, max_members]``
    with ``n_perturbations`` as padding. Returns ``[..., n_cells, n_latent]``: zero for controls,
    ``delta[a]`` for a single perturbation ``a``, ``delta[a] + delta[b]`` for ``"a+b"``.
    """
    padded = torch.cat([delta, delta.new_zeros(delta.shape[:-2] + (1, delta.shape[-1]))], dim=-2)
    return padded[..., perturbations, :].sum(-2)


def call_prior(prior: Callable, n_perturbations: int, n_latent: int, device=None):
    """Call ``prior(P, K)`` as the model does (its plates made once, tensors on ``device``)."""
    with prior_scope(device):
        return prior(n_perturbations, n_latent)


def model(
    library: torch.Tensor,
    perturbations: torch.Tensor,
    batch: Optional[torch.Tensor] = None,
    counts: Optional[torch.Tensor] = None,
    *,
    nets: Networks,
    prior: Callable,
    n_perturbations: int,
    likelihood: str = "nb",
    n_cells: Optional[int] = None,
    cell_index: Optional[torch.Tensor] = None,
    kl_weight: float = 1.0,
):
    """Sparse mechanism shift model of a perturbation screen.

    ::

        delta = prior(P, K)                           # [P, K] effective shifts (mask * shift)
        for cell i with perturbations a(i):           # a(i) empty for controls
            z[i]      ~ Normal(sum delta[a(i)], 1)    # [K] latent state after intervention
            counts[i] ~ NB(l[i] softmax(f(z[i], b[i])), theta)   # [G] observed counts

    Parameters
    ----------
    library : Tensor ``[B]``
        Observed library size of each cell in the minibatch (zeros are floored at 1).
    perturbations : LongTensor ``[B, M]``
        Member indices of each cell's perturbation; ``n_perturbations`` pads.
    batch : LongTensor ``[B]``, optional
        Batch index of each cell.
    counts : Tensor ``[B, G]``, optional
        Observed counts; ``None`` samples them (simulation, posterior predictive).
    likelihood : str
        A name in :data:`pyro_svae.likelihoods.LIKELIHOODS`.
    n_cells, cell_index :
        Size of the full data set and the indices of this minibatch, so that the local terms are
        scaled by ``n_cells / B``. Default: the minibatch is the whole data set.
    kl_weight : float
        KL warm-up weight (> 0) of the ``z`` site and of the prior's global sites; the guide
        scales its sites by the same weight (the exact KLs take the guide site's scale).

    Notes
    -----
    A prior that returns :class:`~pyro_svae.priors.ShiftMoments` has its masks integrated out:
    ``z`` is scored against the mean shift and the factor ``shift_variance`` adds
    ``-variance / 2`` per cell and latent, which makes ``E_mask[log p(z | delta)]`` exact.
    """
    count_likelihood = get_likelihood(likelihood)
    with poutine.scale(scale=kl_weight):
        delta = call_prior(prior, n_perturbations, nets.n_latent, library.device)  # [P, K] or ShiftMoments
    variance = None
    if isinstance(delta, ShiftMoments):
        delta, variance = delta.mean, delta.variance.to(library.device)
    delta = delta.to(library.device)
    pyro.module("decoder", nets.decoder)
    dispersion = dispersion_param(count_likelihood, nets.n_genes, library.device)  # [G] or None
    n_batch = library.shape[0]
    with pyro.plate("cells", n_cells or n_batch, subsample=cell_index, dim=CELLS_DIM):
        loc = cell_shifts(delta, perturbations)  # [B, K]
        with poutine.scale(scale=kl_weight):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))  # [B, K]
            if variance is not None:
                pyro.factor("shift_variance", -0.5 * cell_shifts(variance, perturbations).sum(-1))  # [B]
        counts_dist = count_distribution(nets.decoder, count_likelihood, z, batch, library, dispersion)
        return pyro.sample("counts", counts_dist.to_event(1), obs=counts)  # [B, G]
