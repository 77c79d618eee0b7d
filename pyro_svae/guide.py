"""The variational guide, mirroring :func:`pyro_svae.model.model` site by site.

Global sites of the prior get guide sites built from a trace of the prior, so a prior is
written once, as a plain function. Each site's guide family follows from its distribution:

============================ ==================================================================
prior site                   guide site
============================ ==================================================================
``Bernoulli``                straight-through Bernoulli (exact 0/1 forward, relaxed gradient;
                             exact Bernoulli KL under ``TraceMeanField_ELBO``)
``RelaxedBernoulli``         ``RelaxedBernoulli`` of the same temperature (model and guide agree)
``infer={"guide": "delta"}`` point estimate in the site's support (MAP); ``infer["init"]`` sets
                             its initial value (default: the prior median)
``infer={"guide": "prior"}`` the prior's own conditional given the guide's draws of the sites
                             before it, so its KL vanishes (straight-through for a Bernoulli)
anything else                ``Normal`` on the unconstrained space, mapped by ``biject_to``
============================ ==================================================================
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to, constraints

from .model import CELLS_DIM
from .nets import Networks
from .priors import ShiftMoments

__all__ = ["PriorSite", "StraightThroughBernoulli", "base_distribution", "inspect_prior", "prior_guide", "guide", "MASK_INIT_LOGIT"]

#: Masks start on (probability 0.95) so every shift receives gradient from the data early;
#: the sparsity penalty then switches off those the data do not need.
MASK_INIT_LOGIT = 3.0
#: Initial scale of Normal guide sites (as Pyro's AutoNormal).
INIT_SCALE = 0.1


class StraightThroughBernoulli(dist.Bernoulli):
    """Bernoulli whose ``rsample`` returns exact 0/1 values with the gradient of ``probs``.

    Being a subclass of ``Bernoulli`` it keeps the exact Bernoulli/Bernoulli KL.
    """

    has_rsample = True

    def rsample(self, sample_shape=torch.Size()):
        probs = self.probs.expand(self._extended_shape(sample_shape))
        hard = torch.bernoulli(probs.detach())
        return hard + (probs - probs.detach())  # exactly 0/1 forward, d(probs) backward


class PriorSite(NamedTuple):
    """A global sample site of a prior, as seen in one trace."""

    name: str
    family: str  # "bernoulli" | "relaxed_bernoulli" | "delta" | "prior" | "normal"
    shape: torch.Size
    event_dim: int
    support: constraints.Constraint
    plates: Tuple[Tuple[str, int, int], ...]  # (name, size, dim)
    init: torch.Tensor  # constrained initial value
    temperature: Optional[torch.Tensor] = None
    scale: Optional[float] = 1.0  # the site's poutine.scale (copied so exact KLs keep it); None: varies


def base_distribution(fn: dist.Distribution) -> dist.Distribution:
    """The distribution under ``.to_event()`` and ``.mask()`` wrappers."""
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _family(site: dict) -> str:
    fn = base_distribution(site["fn"])
    requested = site["infer"].get("guide")
    if requested in ("delta", "prior"):
        return requested
    if requested is not None:
        raise ValueError(f"Prior site {site['name']!r} asks for guide {requested!r}; expected 'delta' or 'prior'.")
    if isinstance(fn, dist.Bernoulli):
        return "bernoulli"
    if isinstance(fn, dist.RelaxedBernoulli):
        return "relaxed_bernoulli"
    if site["fn"].support.is_discrete:
        raise ValueError(f"Prior site {site['name']!r} is discrete ({type(fn).__name__}); only Bernoulli is supported.")
    return "normal"


def inspect_prior(prior: Callable, n_perturbations: int, n_latent: int) -> Tuple[PriorSite, ...]:
    """Trace ``prior`` once and describe its sample sites; check that it returns ``[P, K]``."""
    trace = poutine.trace(prior).get_trace(n_perturbations, n_latent)
    delta = trace.nodes["_RETURN"]["value"]
    if isinstance(delta, ShiftMoments):
        delta = delta.mean
    expected = (n_perturbations, n_latent)
    if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != expected:
        got = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
        raise ValueError(f"The prior must return a tensor of shape {expected} (n_perturbations, n_latent), but got {got}.")
    sites = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        fn, family = site["fn"], _family(site)
        temperature = None
        if family == "relaxed_bernoulli":
            temperature = base_distribution(fn).temperature
        if family == "prior":
            init = site["value"].detach()  # unused: the site has no parameters of its own
        elif family in ("bernoulli", "relaxed_bernoulli"):
            init = torch.full(site["value"].shape, MASK_INIT_LOGIT)
        elif "init" in site["infer"]:
            init = torch.as_tensor(site["infer"]["init"], dtype=torch.get_default_dtype()).expand(site["value"].shape)
        else:
            # the median of a few prior draws, as pyro.infer.autoguide.init_to_median
            init = fn.sample((15,)).median(0).values if family == "delta" else biject_to(fn.support)(
                torch.zeros(site["value"].shape))
        plates = tuple((f.name, f.size, f.dim) for f in site["cond_indep_stack"] if f.vectorized)
        # a tensor scale is computed from other sites (as a slab weighted by pi): read it per step
        scale = None if isinstance(site["scale"], torch.Tensor) else float(site["scale"])
        sites.append(PriorSite(name, family, site["value"].shape, fn.event_dim, fn.support, plates, init.detach(),
                               temperature, scale))
    return tuple(sites)


def _prior_trace(prior: Callable, shape: Tuple[int, int], values: dict):
    """A trace of the prior given the guide's ``values`` of the sites drawn so far."""
    with poutine.block():
        return poutine.trace(poutine.condition(prior, data=values)).get_trace(*shape)


def _prior_conditional(fn: dist.Distribution, name: str) -> dist.Distribution:
    """The prior's own distribution at a site, made reparameterizable (straight-through Bernoulli)."""
    base = base_distribution(fn)
    if isinstance(base, dist.Bernoulli):
        straight = StraightThroughBernoulli(logits=base.logits)
        return straight.to_event(fn.event_dim) if fn.event_dim else straight
    if not fn.has_rsample:
        raise ValueError(f"Prior site {name!r} with guide 'prior' must be reparameterizable or Bernoulli.")
    return fn


def _guide_distribution(site: PriorSite, device) -> dist.Distribution:
    init = site.init.to(device)
    if site.family == "bernoulli":
        logits = pyro.param(f"{site.name}_logits", init)
        return StraightThroughBernoulli(logits=logits)
    if site.family == "relaxed_bernoulli":
        logits = pyro.param(f"{site.name}_logits", init)
        return dist.RelaxedBernoulli(site.temperature.to(device), logits=logits)
    if site.family == "delta":
        value = pyro.param(f"{site.name}_map", init, constraint=site.support)
        return dist.Delta(value, event_dim=site.event_dim)
    transform = biject_to(site.support)
    loc = pyro.param(f"{site.name}_loc", transform.inv(init))
    scale = pyro.param(f"{site.name}_scale", torch.full_like(init, INIT_SCALE), constraint=constraints.positive)
    base = dist.Normal(loc, scale)
    if site.support is not constraints.real:
        base = dist.TransformedDistribution(base, transform)
    return base.to_event(site.event_dim) if site.event_dim else base


def prior_guide(sites: Tuple[PriorSite, ...], prior: Callable, shape: Tuple[int, int], device=None) -> dict:
    """Sample every prior site from its guide, in the prior's plates; returns ``{name: value}``.

    ``shape`` is ``(n_perturbations, n_latent)``, the arguments the prior is called with.
    """
    values = {}
    plates = {}
    for name, size, dim in (p for site in sites for p in site.plates):
        if name not in plates:  # a plate is created once and entered by every site inside it
            plates[name] = pyro.plate(name, size, dim=dim)
    for site in sites:
        scale = site.scale
        if site.family == "prior" or scale is None:
            # read outside the plates (the prior opens its own): the prior's conditional at this
            # site, or its scale when that depends on earlier sites (as a slab weighted by pi)
            node = _prior_trace(prior, shape, values).nodes[site.name]
            scale = node["scale"] if scale is None else scale
        fn = _prior_conditional(node["fn"], site.name) if site.family == "prior" else _guide_distribution(site, device)
        with contextlib.ExitStack() as stack:
            for name, _, _ in site.plates:
                stack.enter_context(plates[name])
            if not isinstance(scale, float) or scale != 1.0:
                stack.enter_context(poutine.scale(scale=scale))
            values[site.name] = pyro.sample(site.name, fn)  # site.shape
    return values


def guide(
    library: torch.Tensor,
    perturbations: torch.Tensor,
    batch: Optional[torch.Tensor] = None,
    counts: Optional[torch.Tensor] = None,
    *,
    nets: Networks,
    prior: Callable,
    prior_sites: Tuple[PriorSite, ...],
    n_perturbations: int,
    likelihood: str = "nb",
    n_cells: Optional[int] = None,
    cell_index: Optional[torch.Tensor] = None,
    kl_weight: float = 1.0,
):
    """Mean-field guide: prior sites as built by :func:`prior_guide`, then the amortized encoder.

    ::

        prior sites ~ q(.)                        # one guide site per prior site
        z[i] ~ Normal(encoder(counts[i], b[i]))   # [K], amortized over cells
    """
    with poutine.scale(scale=kl_weight):
        prior_guide(prior_sites, prior, (n_perturbations, nets.n_latent), library.device)
    pyro.module("encoder", nets.encoder)
    n_batch = library.shape[0]
    with pyro.plate("cells", n_cells or n_batch, subsample=cell_index, dim=CELLS_DIM):
        loc, scale = nets.encoder(counts, batch)
        with poutine.scale(scale=kl_weight):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))  # [B, K]
