"""The generative model of sparse mechanism shift modeling (Lopez et al., CLeaR 2023)."""

from __future__ import annotations

from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import constraints

from .nets import Networks
from .priors import ShiftMoments

__all__ = ["CELLS_DIM", "LIKELIHOODS", "model", "cell_shifts", "count_distribution"]

CELLS_DIM = -1
LIKELIHOODS = ("nb", "zinb", "poisson")


def cell_shifts(delta: torch.Tensor, perturbations: torch.Tensor) -> torch.Tensor:
    """Sum the effective shifts of each cell's perturbations.

    ``delta`` is ``[..., n_perturbations, n_latent]``; ``perturbations`` is ``[n_cells, max_members]``
    with ``n_perturbations`` as padding. Returns ``[..., n_cells, n_latent]``: zero for controls,
    ``delta[a]`` for a single perturbation ``a``, ``delta[a] + delta[b]`` for ``"a+b"``.
    """
    padded = torch.cat([delta, delta.new_zeros(delta.shape[:-2] + (1, delta.shape[-1]))], dim=-2)
    return padded[..., perturbations, :].sum(-2)


def count_distribution(log_proportions, gate_logits, library, dispersion, likelihood: str):
    """The count distribution of each cell and gene: ``batch_shape [..., n_cells, n_genes]``.

    The mean is ``library * softmax(decoder(z))``; ``dispersion`` is the negative binomial's
    inverse overdispersion ``theta`` (variance ``mu + mu^2 / theta``).
    """
    log_mean = torch.log(library).unsqueeze(-1) + log_proportions
    if likelihood == "poisson":
        return dist.Poisson(log_mean.exp())
    logits = log_mean - torch.log(dispersion)
    if likelihood == "nb":
        return dist.NegativeBinomial(total_count=dispersion, logits=logits)
    return dist.ZeroInflatedNegativeBinomial(total_count=dispersion, logits=logits, gate_logits=gate_logits)


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
    n_latent = nets.n_latent
    with poutine.scale(scale=kl_weight):
        delta = prior(n_perturbations, n_latent)  # [P, K] or ShiftMoments of [P, K]
    variance = None
    if isinstance(delta, ShiftMoments):
        delta, variance = delta.mean, delta.variance.to(library.device)
    delta = delta.to(library.device)  # a prior may build constants (e.g. zeros) on the CPU
    pyro.module("decoder", nets.decoder)
    dispersion = None
    if likelihood != "poisson":
        dispersion = pyro.param("dispersion", lambda: torch.full((nets.n_genes,), 5.0, device=library.device),
                                constraint=constraints.positive)  # [G]
    n_batch = library.shape[0]
    with pyro.plate("cells", n_cells or n_batch, subsample=cell_index, dim=CELLS_DIM):
        loc = cell_shifts(delta, perturbations)  # [B, K]
        with poutine.scale(scale=kl_weight):
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))  # [B, K]
            if variance is not None:
                pyro.factor("shift_variance", -0.5 * cell_shifts(variance, perturbations).sum(-1))  # [B]
        log_proportions, gate_logits = nets.decoder(z, batch)
        library = library.clamp(min=1.0)
        likelihood_dist = count_distribution(log_proportions, gate_logits, library, dispersion, likelihood)
        return pyro.sample("counts", likelihood_dist.to_event(1), obs=counts)  # [B, G]
