"""The ELBO that training optimises: ``TraceMeanField_ELBO``'s estimator for this model, fused.

Pyro's ``SVI`` with ``TraceMeanField_ELBO`` traces the guide and the model (with the prior inside
each) and then walks both traces site by site. For this model the cell-level half is fixed, so
:func:`elbo` computes it directly in torch, and runs the prior **once**, each site drawn from its
guide with the prior's own distribution kept beside it (:class:`JointPass`): the same draws in
the same order, the same analytic KLs (a Monte Carlo term where none is registered), the same
scales and masks, as the two traces would give. ``tests/test_objective.py`` checks it equals
``TraceMeanField_ELBO().loss`` on the same draws for every prior of the zoo; ``fit(...,
objective="pyro")`` trains with Pyro's own ``SVI`` instead.
"""

from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from .factory import Components
from .guide import encode
from .likelihoods import count_distribution, dispersion_param
from .model import cell_shifts
from .plates import prior_scope
from .priors import ShiftMoments

__all__ = ["JointPass", "SiteTerms", "run_prior", "shift_moments", "global_elbo", "cell_terms", "elbo", "cell_elbo"]


class SiteTerms(NamedTuple):
    """One sample site of a prior as a joint pass sees it."""

    name: str
    prior: Optional[dist.Distribution]  # p at the site given the draws before it (None: observed)
    guide: dist.Distribution  # q (the prior's own distribution for an observed site)
    value: torch.Tensor
    scale: object
    mask: object
    observed: bool


class JointPass(Messenger):
    """Run a prior once with its sites drawn from the guide, recording ``p`` and ``q`` at each."""

    def __init__(self, prior_guide):
        super().__init__()
        self.prior_guide = prior_guide
        self.records: List[SiteTerms] = []
        self._prior_fns = {}

    def _pyro_sample(self, msg: dict) -> None:
        if type(msg["fn"]).__name__ == "_Subsample" or msg["is_observed"]:
            return
        self._prior_fns[msg["name"]] = msg["fn"]
        self.prior_guide._pyro_sample(msg)  # the site's guide distribution replaces the prior's

    def _pyro_post_sample(self, msg: dict) -> None:
        if type(msg["fn"]).__name__ == "_Subsample" or msg["infer"].get("_deterministic"):
            return
        self.records.append(SiteTerms(msg["name"], self._prior_fns.get(msg["name"]), msg["fn"], msg["value"],
                                      msg["scale"], msg["mask"], msg["is_observed"]))


def run_prior(components: Components, device, kl_weight):
    """Run the prior once with each site drawn from its guide (:class:`JointPass`), under ``kl_weight``:
    ``(what the prior returns, the sites' records)``."""
    joint = JointPass(components.prior_guide)
    components.prior_guide.device = device
    shape = (components.n_perturbations, components.config.n_latent)
    with poutine.block(), poutine.scale(scale=kl_weight), prior_scope(device), joint:
        result = components.prior(*shape)
    return result, joint.records


def global_elbo(records: List[SiteTerms]) -> torch.Tensor:
    """The prior's part of the ELBO: ``-KL(q || p)`` per latent site (analytic where registered, else
    ``log p - log q`` at the draw, as ``TraceMeanField_ELBO``), plus the observed sites' log-densities."""
    total = torch.zeros(())
    for site in records:
        if site.observed:
            total = total + scale_and_mask(site.guide.log_prob(site.value), site.scale, site.mask).sum()
            continue
        try:
            kl = kl_divergence(site.guide, site.prior)
            total = total - scale_and_mask(kl, site.scale, site.mask).sum()
        except NotImplementedError:
            log_ratio = site.prior.log_prob(site.value) - site.guide.log_prob(site.value)
            total = total + scale_and_mask(log_ratio, site.scale, site.mask).sum()
    return total


def cell_terms(components: Components, batch: dict, delta, variance=None):
    """``(log p(x | z), KL(q(z | x) || p(z | delta)))`` per cell, ``[B]`` each, at one draw of ``z``.

    With mask ``variance`` (a prior returning ``ShiftMoments``) the KL includes its ``variance / 2``
    per latent, which makes the expectation over the masks exact.
    """
    nets = components.nets
    q = encode(nets, batch, delta)  # event shape [K]
    z = q.rsample()  # [B, K]
    kl = kl_divergence(q, dist.Normal(cell_shifts(delta, batch["perturbations"]), 1.0).to_event(1))  # [B]
    if variance is not None:
        kl = kl + 0.5 * cell_shifts(variance, batch["perturbations"]).sum(-1)
    dispersion = dispersion_param(components.likelihood, nets.n_genes, batch["library"].device)
    counts = count_distribution(nets.decoder, components.likelihood, z, batch["batch"], batch["library"], dispersion)
    return counts.log_prob(batch["counts"]).sum(-1), kl


def shift_moments(result, device):
    """``(delta, variance)`` of what a prior returned, on ``device``: its mean and mask variance for a
    ``ShiftMoments``, else the shifts themselves and ``None``."""
    if isinstance(result, ShiftMoments):
        return result.mean.to(device), result.variance.to(device)
    return result.to(device), None


def elbo(components: Components, batch: dict, n_cells: int, kl_weight: float = 1.0):
    """The minibatch estimate of the full-data ELBO (a differentiable scalar): the prior's terms,
    weighted by the warm-up ``kl_weight``, plus ``n_cells / B`` times the cells' terms. Returns it
    with the cells' own ELBOs ``log p(x | z) - KL`` ``[B]`` (detached), for monitoring."""
    device = batch["library"].device
    result, records = run_prior(components, device, kl_weight)
    delta, variance = shift_moments(result, device)
    log_lik, kl = cell_terms(components, batch, delta, variance)
    total = global_elbo(records).to(device) + n_cells / len(log_lik) * (log_lik - kl_weight * kl).sum()
    return total, (log_lik - kl).detach()


def cell_elbo(components: Components, batch: dict) -> torch.Tensor:
    """Per-cell ELBO ``log p(x | z) - KL(q(z | x) || p(z | delta))`` at one draw of the globals: ``[B]``."""
    device = batch["library"].device
    result, _ = run_prior(components, device, 1.0)
    log_lik, kl = cell_terms(components, batch, *shift_moments(result, device))
    return log_lik - kl


def parameters(store) -> list:
    """The unconstrained leaf tensors of every parameter in the param store (what the optimiser updates)."""
    return [store._params[name] for name in store.keys()]


def step_function(components: Components, optimizer: Callable, store) -> Callable:
    """One SVI step with :func:`elbo`: gradients, ``optimizer(params)``, gradients cleared.

    The step takes ``(batch, n_cells, kl_weight)`` and returns the loss and the sum of the minibatch
    cells' ELBOs as detached 0-d tensors on the device (reading them, a device sync, is the caller's
    choice)."""
    params = None

    def step(batch: dict, n_cells: int, kl_weight: float):
        nonlocal params
        value, cells = elbo(components, batch, n_cells, kl_weight)
        loss = -value
        if params is None:  # every parameter exists after the first evaluation
            params = parameters(store)
        loss.backward()
        optimizer(params)
        for p in params:
            p.grad = None
        return loss.detach(), cells.sum()

    return step


def register_networks(components: Components) -> None:
    """Register the networks in the param store (``pyro.module``), so that its tensors are theirs."""
    pyro.module("encoder", components.nets.encoder)
    pyro.module("decoder", components.nets.decoder)
