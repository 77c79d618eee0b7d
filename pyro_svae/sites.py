"""The sites of a prior, read from one trace of it: what the guide builds, transfer extends and
persistence names.

Each sample site gets a guide family from its distribution and support (as Pyro's ``AutoNormal``
reads them), and parameters in their own namespace, ``PriorGuide.<role>.<site>`` (as
``AutoNormal.locs.<site>``), so no name a prior can use collides with them. A site is
per-perturbation when it sits in a plate named ``perturbations`` of size ``P``, at any dim: that
plate's axis is the one :meth:`~pyro_svae.SVAE.transfer` extends. Everything a prior can hold that
the package cannot guide is refused here, at ``fit`` time, with the site's name.

============================ ==================================================================
prior site                   guide family
============================ ==================================================================
``Bernoulli``                straight-through Bernoulli (exact 0/1 forward, relaxed gradient;
                             exact Bernoulli KL under ``TraceMeanField_ELBO``)
``RelaxedBernoulli``         ``RelaxedBernoulli`` of the same temperature (model and guide agree)
``infer={"guide": "delta"}`` point estimate in the site's support (MAP); ``infer["init"]`` sets
                             its initial value (default: the prior median)
``infer={"guide": "prior"}`` the prior's own conditional given the guide's draws of the sites
                             before it, so its KL vanishes (straight-through for a Bernoulli)
anything else                ``Normal`` on the unconstrained space, mapped by ``biject_to``
                             (supports that change shape, as simplex or Cholesky factors, and
                             event dims as ``AutoNormal`` handles them)
============================ ==================================================================
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional, Tuple

import pandas as pd
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to, constraints

from .plates import prior_scope
from .priors import ShiftMoments

__all__ = ["PriorSite", "NAMESPACE", "RESERVED", "ROLE_CONSTRAINTS", "MASK_INIT_LOGIT", "INIT_SCALE", "base_distribution",
           "describe_prior", "describe_guide", "prior_params"]

#: Prefix of every guide parameter of a prior site.
NAMESPACE = "PriorGuide"
#: Names a prior may not give its sites or parameters: the model's own sites and parameters, its
#: networks, and what the package exports beside the prior's sites.
RESERVED = ("z", "counts", "cells", "shift_variance", "dispersion", "encoder", "decoder", "delta", "inclusion")
#: Masks start on (probability 0.95) so every shift receives gradient from the data early;
#: the sparsity penalty then switches off those the data do not need.
MASK_INIT_LOGIT = 3.0
#: Initial scale of Normal guide sites (as Pyro's AutoNormal).
INIT_SCALE = 0.1

#: The parameters of each family: role -> how the initial value is made.
_ROLES = {"bernoulli": ("logits",), "relaxed_bernoulli": ("logits",), "delta": ("values",), "prior": (),
          "normal": ("locs", "scales")}


class PriorSite(NamedTuple):
    """A sample site of a prior, as seen in one trace, and its guide's parameters."""

    name: str
    family: str  # "bernoulli" | "relaxed_bernoulli" | "delta" | "prior" | "normal"
    shape: torch.Size  # of the (constrained) value
    event_dim: int
    support: object
    plates: Tuple[Tuple[str, int, int], ...]  # (name, size, dim)
    params: Dict[str, str]  # role -> parameter name in the param store
    init: Dict[str, torch.Tensor]  # role -> initial value (constrained, as pyro.param takes it)
    unconstrained_event_dim: int
    temperature: Optional[torch.Tensor] = None

    @property
    def perturbation_axis(self) -> Optional[int]:
        """Axis (negative) of the site's parameters along the perturbations, or ``None``."""
        for name, _, dim in self.plates:
            if name == "perturbations":
                return dim - self.unconstrained_event_dim
        return None


def base_distribution(fn: dist.Distribution) -> dist.Distribution:
    """The distribution under ``.to_event()`` and ``.mask()`` wrappers."""
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _family(site: dict) -> str:
    fn, name = base_distribution(site["fn"]), site["name"]
    requested = site["infer"].get("guide")
    if requested not in (None, "delta", "prior"):
        raise ValueError(f"Prior site {name!r} asks for guide {requested!r}; expected 'delta' or 'prior'.")
    if requested == "delta" and site["fn"].support.is_discrete:
        raise ValueError(f"Prior site {name!r} is discrete ({type(fn).__name__}) with infer={{'guide': 'delta'}}: a "
                         "point estimate of a discrete site has no gradient. Drop the 'guide' entry (a Bernoulli "
                         "gets a straight-through guide), or make the site's probability the point estimate.")
    if requested is not None:
        return requested
    if isinstance(fn, dist.Bernoulli):
        return "bernoulli"
    if isinstance(fn, dist.RelaxedBernoulli):
        return "relaxed_bernoulli"
    if site["fn"].support.is_discrete:
        raise ValueError(f"Prior site {name!r} is discrete ({type(fn).__name__}); only Bernoulli is supported. "
                         "Integrate it out, or relax it (e.g. RelaxedBernoulli, Dirichlet for a categorical).")
    return "normal"


def _check_name(name: str, what: str) -> None:
    if name in RESERVED or name.startswith(NAMESPACE + ".") or "$$$" in name:
        raise ValueError(f"The prior's {what} {name!r} uses a name reserved by the model; rename it. Reserved: "
                         f"{list(RESERVED)} and names starting with {NAMESPACE + '.'!r}.")


def _initial_values(site: dict, family: str) -> Dict[str, torch.Tensor]:
    """The initial value of each guide parameter, as ``pyro.param`` takes it (``values``: in the
    site's support; ``locs``: unconstrained; ``scales``: positive; ``logits``: real)."""
    fn, value = site["fn"], site["value"].detach()
    if family in ("bernoulli", "relaxed_bernoulli"):
        return {"logits": torch.full(value.shape, MASK_INIT_LOGIT)}
    if family == "prior":
        return {}
    transform = biject_to(fn.support)
    if "init" in site["infer"]:
        init = torch.as_tensor(site["infer"]["init"], dtype=torch.get_default_dtype()).expand(value.shape).clone()
    elif family == "delta":  # the median of a few prior draws, as pyro.infer.autoguide.init_to_median
        init = fn.sample((15,)).median(0).values
    else:  # the image of 0 on the unconstrained space
        init = transform(torch.zeros_like(transform.inv(value)))
    if family == "delta":
        return {"values": init}
    loc = transform.inv(init)
    return {"locs": loc, "scales": torch.full_like(loc, INIT_SCALE)}


#: Constraint of each role's parameter (``values`` take the site's support).
ROLE_CONSTRAINTS = {"locs": constraints.real, "scales": constraints.positive, "logits": constraints.real}


def _trace(prior: Callable, n_perturbations: int, n_latent: int):
    try:
        with prior_scope():
            return poutine.trace(prior).get_trace(n_perturbations, n_latent)
    except (RuntimeError, ValueError, TypeError) as err:
        message = str(err).split("\nTrace Shapes:")[0].strip()  # Pyro appends the shapes of the trace
        if "Multiple sample sites named" in message:
            raise ValueError(f"{message}. A plate is a sample site: create each once, e.g. with "
                             "pyro_svae.priors.latents_plate(K) next to plates(P, K), which reuse one plate "
                             "per name.") from None
        options = getattr(prior, "keywords", None)
        where = f" with options {options}" if options else ""
        raise type(err)(f"The prior failed when called as prior({n_perturbations}, {n_latent}){where}: "
                        f"{message}") from None


def describe_prior(prior: Callable, n_perturbations: int, n_latent: int) -> Tuple[PriorSite, ...]:
    """Trace ``prior`` once and describe its sample sites; check that it returns ``[P, K]``.

    Raises ``ValueError`` for what the guide cannot handle (naming the site): a reserved name,
    a sequential or subsampled plate, a discrete site other than Bernoulli, a Bernoulli with a
    point estimate, a ``perturbations`` plate of another size.
    """
    trace = _trace(prior, n_perturbations, n_latent)
    delta = trace.nodes["_RETURN"]["value"]
    if isinstance(delta, ShiftMoments):
        delta = delta.mean
    expected = (n_perturbations, n_latent)
    if not isinstance(delta, torch.Tensor) or tuple(delta.shape) != expected:
        got = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
        raise ValueError(f"The prior must return a tensor of shape {expected} (n_perturbations, n_latent), but got {got}.")
    sites = []
    for name, site in trace.nodes.items():
        if site["type"] == "param":
            _check_name(name, "parameter")
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        _check_name(name, "site")
        if site["is_observed"]:
            continue
        for frame in site["cond_indep_stack"]:
            if not frame.vectorized:
                raise ValueError(f"Prior site {name!r} is in a sequential plate {frame.name!r} (`for i in pyro.plate`); "
                                 "use a vectorized plate (`with pyro.plate(...)`).")
            if frame.full_size is not None and frame.full_size != frame.size:
                raise ValueError(f"Prior site {name!r} is in a subsampled plate {frame.name!r}; prior plates take no "
                                 "subsample_size.")
            if frame.name == "perturbations" and frame.size != n_perturbations:
                raise ValueError(f"Prior site {name!r} is in a plate named 'perturbations' of size {frame.size}; "
                                 f"expected the number of perturbations, {n_perturbations}.")
        family = _family(site)
        init = _initial_values(site, family)
        fn = site["fn"]
        unconstrained = biject_to(fn.support).inv(site["value"].detach()) if family in ("normal", "delta") else site["value"]
        temperature = base_distribution(fn).temperature if family == "relaxed_bernoulli" else None
        sites.append(PriorSite(
            name=name, family=family, shape=site["value"].shape, event_dim=fn.event_dim, support=fn.support,
            plates=tuple((f.name, f.size, f.dim) for f in site["cond_indep_stack"]),
            params={role: f"{NAMESPACE}.{role}.{name}" for role in _ROLES[family]}, init=init,
            unconstrained_event_dim=fn.event_dim + unconstrained.dim() - site["value"].dim(), temperature=temperature))
    return tuple(sites)


def prior_params(prior: Callable, n_perturbations: int, n_latent: int) -> Tuple[str, ...]:
    """Names of the prior's own ``pyro.param`` parameters."""
    trace = _trace(prior, n_perturbations, n_latent)
    return tuple(name for name, site in trace.nodes.items() if site["type"] == "param")


def describe_guide(prior: Callable, n_perturbations: int, n_latent: int) -> pd.DataFrame:
    """The table of a prior's sites and of the guide the package builds for them.

    Parameters
    ----------
    prior : callable or str
        A prior function ``prior(n_perturbations, n_latent)`` or a built-in name.

    Returns
    -------
    pandas.DataFrame
        One row per sample site: ``site``, ``shape``, ``support``, ``plates`` (name: size),
        ``per_perturbation``, ``guide`` (the family) and ``parameters`` (name and shape of each
        guide parameter).
    """
    from .priors import resolve_prior

    rows = []
    for site in describe_prior(resolve_prior(prior), n_perturbations, n_latent):
        shapes = {name: tuple(site.init[role].shape) for role, name in site.params.items()}
        rows.append({"site": site.name, "shape": tuple(site.shape), "support": str(site.support),
                     "plates": ", ".join(f"{n}: {s}" for n, s, _ in site.plates),
                     "per_perturbation": site.perturbation_axis is not None, "guide": site.family,
                     "parameters": ", ".join(f"{n} {s}" for n, s in shapes.items())})
    return pd.DataFrame(rows, columns=["site", "shape", "support", "plates", "per_perturbation", "guide", "parameters"])
