"""The variational guide, mirroring :func:`pyro_svae.model.model` site by site.

The prior's global sites are guided by running **the prior itself** with each sample site's
distribution replaced by its variational family (:class:`PriorGuide`, families in
:mod:`pyro_svae.sites`). So the guide has the prior's sites, plates, order and scales by
construction (a slab weighted by ``pi`` is weighted by the guide's own ``pi``), a site with
``infer={"guide": "prior"}`` gets the prior's conditional given the guide's earlier draws, and a
prior is written once, as a plain function. The prior's factors and deterministic sites are
hidden from the guide; its own ``pyro.param`` parameters are the model's, never the guide's.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch.distributions import biject_to

from .distributions import StraightThroughBernoulli
from .model import CELLS_DIM, cell_shifts
from .nets import Networks
from .plates import prior_scope
from .priors import ShiftMoments
from .sites import ROLE_CONSTRAINTS, PriorSite, base_distribution

__all__ = ["PriorGuide", "guide", "encode"]


def _prior_conditional(fn: dist.Distribution, name: str) -> dist.Distribution:
    """The prior's own distribution at a site, made reparameterizable (straight-through Bernoulli)."""
    base = base_distribution(fn)
    if isinstance(base, dist.Bernoulli):
        straight = StraightThroughBernoulli(logits=base.logits)
        return straight.to_event(fn.event_dim) if fn.event_dim else straight
    if not fn.has_rsample:
        raise ValueError(f"Prior site {name!r} with guide 'prior' must be reparameterizable or Bernoulli.")
    return fn


class PriorGuide(Messenger):
    """The variational family of every sample site of a prior, as a Pyro messenger.

    Used as ``with PriorGuide(sites): prior(P, K)``: each sample site of the prior draws from its
    guide distribution (parameters ``PriorGuide.<role>.<site>``, :mod:`pyro_svae.sites`) instead
    of the prior, keeping the prior's plates and scales. :meth:`sample` does that for the package.
    """

    def __init__(self, sites: Tuple[PriorSite, ...]):
        super().__init__()
        self.sites = {site.name: site for site in sites}
        self.device = None

    def _param(self, site: PriorSite, role: str, device) -> torch.Tensor:
        constraint = site.support if role == "values" else ROLE_CONSTRAINTS[role]
        return pyro.param(site.params[role], lambda: site.init[role].to(device), constraint=constraint,
                          event_dim=site.unconstrained_event_dim if role != "values" else site.event_dim)

    def distribution(self, site: PriorSite, prior_fn: dist.Distribution, device=None) -> dist.Distribution:
        """``q`` at ``site``; ``prior_fn`` is the prior's distribution there (given the guide's draws so far)."""
        if site.family == "prior":
            return _prior_conditional(prior_fn, site.name)
        if site.family == "bernoulli":
            return StraightThroughBernoulli(logits=self._param(site, "logits", device))
        if site.family == "relaxed_bernoulli":
            return dist.RelaxedBernoulli(site.temperature.to(device), logits=self._param(site, "logits", device))
        if site.family == "delta":
            return dist.Delta(self._param(site, "values", device), event_dim=site.event_dim)
        base = dist.Normal(self._param(site, "locs", device), self._param(site, "scales", device))
        if site.unconstrained_event_dim:
            base = base.to_event(site.unconstrained_event_dim)
        transform = biject_to(site.support)
        if site.support is not torch.distributions.constraints.real:
            base = dist.TransformedDistribution(base, transform)
        return base

    def _pyro_sample(self, msg: dict) -> None:
        if msg["is_observed"] or type(msg["fn"]).__name__ == "_Subsample":
            return
        site = self.sites.get(msg["name"])
        if site is None:
            raise ValueError(f"The prior drew a site {msg['name']!r} that was not in its first trace "
                             f"({sorted(self.sites)}); a prior must draw the same sites on every call.")
        msg["fn"] = self.distribution(site, msg["fn"], self.device)

    def sample(self, prior: Callable, n_perturbations: int, n_latent: int, device=None):
        """Run ``prior`` with every site drawn from the guide; returns what the prior returns.

        Observed sites (``pyro.factor``, ``pyro.deterministic``) are hidden: they belong to the model.
        """
        self.device = device
        with prior_scope(device), poutine.block(hide_fn=lambda msg: msg["is_observed"]), self:
            return prior(n_perturbations, n_latent)


def encode(nets: Networks, batch: dict, delta: Optional[torch.Tensor] = None) -> dist.Distribution:
    """``q(z | x)`` of a minibatch's cells: a Gaussian of event shape ``[K]``, batch shape ``[..., B]``
    (``Normal(loc, scale).to_event(1)``, or ``MultivariateNormal`` for a full-covariance encoder).

    A conjugate encoder (``fit(encoder="conjugate")``) also takes each cell's prior ``N(shift, I)``:
    ``delta`` ``[..., P, K]`` are the effective shifts (a draw, or their posterior mean), which the
    other encoders ignore.
    """
    prior_loc = None
    if nets.encoder.conjugate:
        if delta is None:
            raise ValueError("A conjugate encoder needs the effective shifts delta [P, K], but got None.")
        prior_loc = cell_shifts(delta, batch["perturbations"])  # [..., B, K]
    loc, scale = nets.encoder(batch["counts"], batch["batch"], prior_loc)
    if nets.encoder.full_covariance:
        return dist.MultivariateNormal(loc, scale_tril=scale)
    return dist.Normal(loc, scale).to_event(1)


def guide(
    library: torch.Tensor,
    perturbations: torch.Tensor,
    batch: Optional[torch.Tensor] = None,
    counts: Optional[torch.Tensor] = None,
    *,
    nets: Networks,
    prior: Callable,
    prior_guide: PriorGuide,
    n_perturbations: int,
    likelihood: str = "nb",
    n_cells: Optional[int] = None,
    cell_index: Optional[torch.Tensor] = None,
    kl_weight: float = 1.0,
):
    """Mean-field guide: the prior's sites from :class:`PriorGuide`, then the amortized encoder.

    ::

        prior sites ~ q(.)                        # the prior, each site drawn from its guide
        z[i] ~ Normal(encoder(counts[i], b[i]))   # [K], amortized over cells
        # encoder="conjugate": that Normal times N(sum delta[a(i)], 1), normalised; "full": a
        # MultivariateNormal (:func:`encode`)
    """
    with poutine.scale(scale=kl_weight):
        delta = prior_guide.sample(prior, n_perturbations, nets.n_latent, library.device)  # [P, K] or ShiftMoments
    delta = (delta.mean if isinstance(delta, ShiftMoments) else delta).to(library.device)
    pyro.module("encoder", nets.encoder)
    n_batch = library.shape[0]
    with pyro.plate("cells", n_cells or n_batch, subsample=cell_index, dim=CELLS_DIM):
        q = encode(nets, {"counts": counts, "batch": batch, "perturbations": perturbations}, delta)
        with poutine.scale(scale=kl_weight):
            return pyro.sample("z", q)  # [B, K]
