"""Draws of the prior's global sites from the guide, and the effective shifts they imply.

One function, :func:`draw_globals`, serves every reader: the tables of targets and shifts, the
ArviZ posterior, the held-out likelihood, predictions and counterfactuals. Draws are vectorised
over a ``draws`` plate when the prior broadcasts (all built-ins do), else taken one by one.

A prior that integrates its masks out (returns :class:`~pyro_svae.priors.ShiftMoments` with
``inclusion``) means ``delta = mask * slab`` with ``mask ~ Bernoulli(inclusion)`` and
``slab = mean / inclusion``; a prior with one Bernoulli or relaxed Bernoulli site per perturbation
and latent reports that site's guide probability as the inclusion probability.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .factory import Components
from .model import call_prior
from .priors import ShiftMoments
from .sites import base_distribution

__all__ = ["GlobalDraws", "draw_globals", "expected_shifts", "MAX_DRAW_ELEMENTS", "EXPECTED_DRAWS"]

#: Bound on ``draws x perturbations x latents`` values drawn at once.
MAX_DRAW_ELEMENTS = 2 ** 24
#: Guide draws averaged by :func:`expected_shifts`.
EXPECTED_DRAWS = 200


class GlobalDraws(NamedTuple):
    """``S`` guide draws of the global sites.

    ``sites`` maps every sample and deterministic site of the prior to ``[S, *shape]``. ``delta``
    ``[S, P, K]`` is the effective shift (its mean over the masks when the prior integrates them
    out); ``slab`` the shift when the target is on and ``inclusion`` the probability that it is
    (``None``: ``slab`` is the effective shift itself); ``variance`` the mask variance of a prior
    returning ``ShiftMoments`` without ``inclusion`` (scored by its moments only), else ``None``.
    """

    sites: Dict[str, torch.Tensor]
    delta: torch.Tensor
    slab: torch.Tensor
    inclusion: Optional[torch.Tensor] = None
    variance: Optional[torch.Tensor] = None

    @property
    def n_draws(self) -> int:
        return self.delta.shape[0]

    def masked_shifts(self) -> torch.Tensor:
        """Effective shifts ``[S, P, K]`` with each mask sampled (``slab`` where there is none)."""
        return self.slab if self.inclusion is None else self.slab * torch.bernoulli(self.inclusion)


def _inclusion_site(components: Components) -> Optional[str]:
    candidates = [s.name for s in components.sites if s.family in ("bernoulli", "relaxed_bernoulli")
                  and tuple(s.shape) == (components.n_perturbations, components.config.n_latent)
                  and s.perturbation_axis is not None]
    return candidates[0] if len(candidates) == 1 else None


def _call(components: Components, device, n_draws: Optional[int]):
    """Guide and replayed-prior traces of one call, vectorised over a ``draws`` plate when ``n_draws``."""
    shape = (components.n_perturbations, components.config.n_latent)

    def traces():
        guide_trace = poutine.trace(components.prior_guide.sample).get_trace(components.prior, *shape, device)
        prior_trace = poutine.trace(poutine.replay(call_prior, trace=guide_trace)).get_trace(
            components.prior, *shape, device)
        return guide_trace, prior_trace

    if n_draws is None:
        return traces()
    nesting = max([2] + [-dim for site in components.sites for _, _, dim in site.plates])
    with pyro.plate("draws", n_draws, dim=-(nesting + 1)):
        return traces()


def _values(components: Components, traces) -> Dict[str, torch.Tensor]:
    """Every site's value, the effective shift and inclusion probability of one (possibly vectorised) call."""
    guide_trace, prior_trace = traces
    values = {name: node["value"] for name, node in prior_trace.nodes.items()
              if node["type"] == "sample" and not site_is_subsample(node) and name != "draws"
              and type(base_distribution(node["fn"])).__name__ != "Unit"}  # pyro.factor sites hold no value
    result = prior_trace.nodes["_RETURN"]["value"]
    if isinstance(result, ShiftMoments):
        values["delta"] = result.mean
        values["inclusion" if result.inclusion is not None else "variance"] = (
            result.inclusion if result.inclusion is not None else result.variance)
    else:
        values["delta"] = result
        name = _inclusion_site(components)
        if name is not None:
            values["inclusion"] = base_distribution(guide_trace.nodes[name]["fn"]).probs
    return values


def _reshape(reference: Dict[str, torch.Tensor], vectorised: Dict[str, torch.Tensor],
             n: int) -> Optional[Dict[str, torch.Tensor]]:
    """The values of a call vectorised over ``n`` draws as ``[n, *shape]``; ``None`` if they do not fit."""
    out = {}
    for name, value in reference.items():
        got = torch.as_tensor(vectorised[name])
        padding = got.dim() - 1 - value.dim()
        if padding >= 0 and got.shape[0] == n and tuple(got.shape[1:]) == (1,) * padding + tuple(value.shape):
            out[name] = got.reshape((n,) + value.shape)
        elif got.shape == value.shape:  # does not depend on the draws (e.g. the zeros of prior "none")
            out[name] = got.expand((n,) + value.shape)
        else:
            return None
    return out


def draw_globals(components: Components, num_samples: int, device=None, vectorize: bool = True) -> GlobalDraws:
    """``num_samples`` draws of the global sites from the guide (inside the model's param scope).

    Vectorised over a ``draws`` plate when the prior broadcasts, in chunks of at most
    :data:`MAX_DRAW_ELEMENTS` shift values; otherwise one call of the prior per draw.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, but got {num_samples}.")
    with torch.no_grad():
        reference = _values(components, _call(components, device, None))
        stacked = None
        if vectorize:
            chunk = max(1, MAX_DRAW_ELEMENTS // max(1, reference["delta"].numel()))
            parts = []
            for start in range(0, num_samples, chunk):
                n = min(chunk, num_samples - start)
                try:
                    part = _reshape(reference, _values(components, _call(components, device, n)), n)
                except (RuntimeError, ValueError):  # the prior does not broadcast over a leading dim
                    part = None
                if part is None:
                    parts = None
                    break
                parts.append(part)
            if parts:
                stacked = {name: torch.cat([p[name] for p in parts]) for name in reference}
        if stacked is None:
            draws = [reference] + [_values(components, _call(components, device, None)) for _ in range(num_samples - 1)]
            stacked = {name: torch.stack([d[name].expand(value.shape) for d in draws]) for name, value in reference.items()}
    delta = stacked.pop("delta").float()
    inclusion, variance = stacked.pop("inclusion", None), stacked.pop("variance", None)
    slab = delta
    if inclusion is not None:
        slab = torch.where(inclusion > 0, delta / inclusion.clamp(min=1e-30), torch.zeros_like(delta))
    return GlobalDraws(stacked, delta, slab, inclusion, variance)


def expected_shifts(components: Components, device=None) -> Optional[torch.Tensor]:
    """The posterior mean of the effective shifts ``[P, K]`` that a conjugate encoder needs where no
    draw of the globals is at hand (a cell's posterior mean latent is linear in it); ``None`` for a
    counts-only encoder. The mean of :data:`EXPECTED_DRAWS` guide draws, seeded: the same model
    gives the same latents, and the caller's random stream is left as it was."""
    if not components.nets.encoder.conjugate:
        return None
    device = torch.device("cpu") if device is None else torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        return draw_globals(components, EXPECTED_DRAWS, device).delta.mean(0)
