"""Priors on the per-perturbation effective shifts, as plain functions.

A prior is any function ``prior(n_perturbations, n_latent) -> Tensor[n_perturbations, n_latent]``
that returns the effective shifts ``delta`` and may call ``pyro.sample`` for its global sites.
The package builds a guide for those sites itself (see :mod:`pyro_svae.guide`), so a new prior is
written once. Use :func:`plates` for the two plates so site shapes line up::

    def student_t_slab(n_perturbations, n_latent):
        with plates(n_perturbations, n_latent):
            mask = pyro.sample("mask", dist.Bernoulli(0.1))           # [P, K]
            shift = pyro.sample("shift", dist.StudentT(3.0, 0.0, 2.0))  # [P, K]
        return mask * shift

:func:`latents_plate` and :func:`perturbations_plate` give each plate alone (a per-latent scale
next to the pair, say): within one call of the prior they return the same plate objects as
:func:`plates`. A prior that takes a keyword argument ``n_cells`` receives the number of
training cells of each perturbation (a ``[P]`` tensor), to scale its sparsity to the data.
A site may ask for a point estimate with ``infer={"guide": "delta"}`` (MAP) or for the prior's own
conditional with ``infer={"guide": "prior"}``.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, NamedTuple, Optional, Union

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from .distributions import InclusionProbability
from .plates import LATENTS_DIM, PERTURBATIONS_DIM, latents_plate, perturbations_plate, plates, prior_scope

__all__ = [
    "ShiftMoments", "PERTURBATIONS_DIM", "LATENTS_DIM", "plates", "perturbations_plate", "latents_plate",
    "prior_scope", "inclusion_logits", "spike_and_slab", "beta_spike_and_slab", "relaxed_bernoulli", "gaussian",
    "laplace", "horseshoe", "none", "PRIORS", "resolve_prior", "prior_name", "MIN_SHIFT", "AUTO_FRACTION",
    "resolve_min_shift",
]

#: Smallest shift (in units of the cells' within-perturbation SD) that ever counts as a target. On a
#: real screen most perturbations move nothing, the typical shift is small and this floor decides:
#: on Papalexi (2021) 0.5 left out IRF1 and CUL3, whose shifts are ~0.4 SD over hundreds of cells,
#: and 0.25 calls them with no target for any of the 15 knockouts without a phenotype. On the
#: simulated grid (shifts of 1.5-5 SD) it binds on the screens of shifts under 2 SD only.
MIN_SHIFT = 0.25
#: ``min_shift="auto"`` is resolved by ``fit`` to ``max(MIN_SHIFT, AUTO_FRACTION x`` the screen's
#: typical shift ``)``, the median over perturbations of their largest shift after a warm start.
AUTO_FRACTION = 0.25


class ShiftMoments(NamedTuple):
    """Effective shifts with their Bernoulli masks integrated out: mean and variance, each ``[P, K]``.

    A prior may return this instead of a tensor when ``delta`` is linear in Bernoulli masks. As the
    prior of ``z`` is Gaussian, ``E_mask[log N(z; delta, I)] = log N(z; mean, I) - variance.sum() / 2``
    exactly, so the model scores the masks in closed form instead of sampling them.

    With ``inclusion``, the shift is read as ``mask * slab``, ``mask ~ Bernoulli(inclusion)``,
    ``slab = mean / inclusion``: simulation (``SVAE.predict``, ``SVAE.counterfactual``) samples the
    masks and ``SVAE.marginal_log_likelihood`` sums over them.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    #: probability that each shift is non-zero (the posterior inclusion probability), if known
    inclusion: Optional[torch.Tensor] = None


def resolve_min_shift(min_shift, typical_shift: Optional[float] = None) -> float:
    """A number for ``min_shift``: itself, or for ``"auto"`` ``max(MIN_SHIFT, AUTO_FRACTION * typical_shift)``.

    Leaks of an imperfect alignment of the latents, and the decoder's distortions, grow with the
    size of the shifts: a screen whose perturbations move cells by 5 SD needs a larger smallest
    target than one whose shifts are 1.5 SD (on the simulator's grid, ``min_shift`` 1.0 against 0.5
    halves the false targets at 5 SD and loses a fifth of the true ones at 1.5 SD).
    """
    if min_shift == "auto":
        return MIN_SHIFT if typical_shift is None else max(MIN_SHIFT, AUTO_FRACTION * float(typical_shift))
    if not isinstance(min_shift, (int, float)) or min_shift < 0:
        raise ValueError(f"Expected min_shift to be 'auto' or a number >= 0, but got {min_shift!r}.")
    return float(min_shift)


def inclusion_logits(n_perturbations: int, n_latent: int, n_cells=None, min_shift="auto",
                     prior_inclusion: Optional[float] = None) -> torch.Tensor:
    """Prior log-odds that latent ``k`` is a target of perturbation ``p``: ``[P, K]``.

    ``logit(prior_inclusion) - n_cells[p] * min_shift**2 / 2``. A shift ``s`` seen in ``n`` cells
    of unit variance brings ``n s^2 / 2`` nats of evidence, so these odds make a target of any
    shift larger than ``min_shift``, and of none smaller, whatever the number of cells: the
    sparsity is scaled to the data. Without it (``n_cells=None``, or a fixed per-entry prior),
    evidence grows with the cells and a screen of thousands of cells turns on every small shift,
    which lets a fit keep its latent axes rotated (a rotation only costs sparsity). ``prior_inclusion``
    (default ``1 / n_latent``, one target per perturbation) matters only for a few cells.
    ``min_shift="auto"`` unresolved (the prior called outside ``fit``) is :data:`MIN_SHIFT`.
    """
    min_shift = resolve_min_shift(min_shift)
    p0 = 1.0 / n_latent if prior_inclusion is None else float(prior_inclusion)
    if not 0.0 < p0 < 1.0:
        raise ValueError(f"Expected prior_inclusion in (0, 1), but got {prior_inclusion!r}.")
    logits = torch.full((n_perturbations, 1), math.log(p0) - math.log1p(-p0))
    if n_cells is not None:
        cells = torch.as_tensor(n_cells, dtype=logits.dtype).reshape(-1, 1)
        if cells.shape[0] != n_perturbations:
            raise ValueError(f"Expected n_cells for {n_perturbations} perturbations, but got {cells.shape[0]}.")
        logits = logits - cells * min_shift**2 / 2
    return logits.expand(n_perturbations, n_latent)


def spike_and_slab(n_perturbations: int, n_latent: int, *, n_cells=None, min_shift="auto",
                   prior_inclusion: Optional[float] = None, slab_scale: float = 5.0, collapsed: bool = True):
    """Spike-and-slab shifts with sparsity scaled to the data (the paper's sVAE+ prior, revised).

    ::

        mask[p, k]  ~ Bernoulli(sigmoid(inclusion_logits))   # is latent k a target of p?
        shift[p, k] ~ Normal(0, slab_scale)                  # size of the shift when it is
        delta = mask * shift

    The prior odds of a target (:func:`inclusion_logits`) fall with the cells of the perturbation,
    so a latent is a target when the shift along it exceeds ``min_shift`` within-perturbation SDs,
    on 10 cells as on 10,000. ``min_shift="auto"`` (default) is set by ``fit`` from the screen's
    typical shift (:func:`resolve_min_shift`): 0.25 SD, more on screens of large shifts.

    With ``collapsed=True`` (default) the mask is integrated out under the spike-and-slab
    variational family of Titsias and Lazaro-Gredilla (2011): ``q(mask) = Bernoulli(pi)`` with
    ``pi`` a point estimate under :class:`~pyro_svae.distributions.InclusionProbability` (whose
    log-density is the mask's ``-KL``), the shift enters through its moments
    (:class:`ShiftMoments`, no straight-through estimator), and ``q(shift | mask = 0)`` is the
    prior, so the slab's KL is weighted by ``pi`` (``poutine.scale``). ``pi`` is then the
    variational posterior inclusion probability. ``collapsed=False`` samples the ``mask`` site
    (straight-through Bernoulli guide) instead: the same objective in expectation, noisier.
    """
    logits = inclusion_logits(n_perturbations, n_latent, n_cells, min_shift, prior_inclusion)
    with plates(n_perturbations, n_latent):
        if not collapsed:
            mask = pyro.sample("mask", dist.Bernoulli(logits=logits))  # [P, K]
            shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
            return mask * shift
        pi = pyro.sample("pi", InclusionProbability(logits), infer={"guide": "delta", "init": 0.95})  # [P, K]
        # the slab is paid for only when the target is on; the floor keeps the scale positive when
        # pi underflows (a scale of 1e-30 on a KL of a few nats is nothing)
        with poutine.scale(scale=pi.clamp(min=1e-30)):
            shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
    return ShiftMoments(pi * shift, pi * (1 - pi) * shift**2, inclusion=pi)


def beta_spike_and_slab(n_perturbations: int, n_latent: int, *, sparsity: float = 50.0, slab_scale: float = 5.0,
                        collapsed: bool = True):
    """The spike-and-slab of pyro_svae 0.1 (as the reference sVAE+ code): a fixed sparsity.

    ::

        pi[p, k]    ~ Beta(1, sparsity)          # inclusion probability (point estimate)
        mask[p, k]  ~ Bernoulli(pi[p, k])        # q(mask) = Bernoulli(pi): the mask KL vanishes
        shift[p, k] ~ Normal(0, slab_scale)
        delta = mask * shift

    The penalty ``(sparsity - 1) log(1 - pi)`` does not grow with the cells: it is too weak to
    keep large screens sparse and too strong for a few cells. Kept to read models saved by 0.1
    and for comparison; prefer :func:`spike_and_slab`.
    """
    with plates(n_perturbations, n_latent):
        pi = pyro.sample("pi", dist.Beta(1.0, sparsity), infer={"guide": "delta", "init": 0.5})  # [P, K]
        if not collapsed:
            mask = pyro.sample("mask", dist.Bernoulli(pi), infer={"guide": "prior"})  # [P, K]
            shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
            return mask * shift
        with poutine.scale(scale=pi):
            shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
    return ShiftMoments(pi * shift, pi * (1 - pi) * shift**2, inclusion=pi)


def relaxed_bernoulli(n_perturbations: int, n_latent: int, *, n_cells=None, min_shift="auto",
                      prior_inclusion: Optional[float] = None, slab_scale: float = 5.0, temperature: float = 0.5):
    """Spike-and-slab with the mask as a relaxed (Concrete) Bernoulli site.

    ::

        mask[p, k]  ~ RelaxedBernoulli(temperature, sigmoid(inclusion_logits))   # in (0, 1)
        shift[p, k] ~ Normal(0, slab_scale)
        delta = mask * shift

    Model and guide both use the relaxed distribution, so the ELBO is that of the relaxed model
    (a straight-through guide against this prior would score the wrong density). The sparsity is
    scaled to the data as in :func:`spike_and_slab`.
    """
    logits = inclusion_logits(n_perturbations, n_latent, n_cells, min_shift, prior_inclusion)
    with plates(n_perturbations, n_latent):
        mask = pyro.sample("mask", dist.RelaxedBernoulli(torch.tensor(temperature), logits=logits))  # [P, K]
        shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
    return mask * shift


def gaussian(n_perturbations: int, n_latent: int, *, slab_scale: float = 5.0):
    """Dense Gaussian shifts, no mask (an iVAE-like baseline): ``shift ~ Normal(0, slab_scale)``."""
    with plates(n_perturbations, n_latent):
        shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
    return shift


def laplace(n_perturbations: int, n_latent: int, *, scale: float = 1.0):
    """Laplace (lasso-like) shrinkage: ``shift ~ Laplace(0, scale)``."""
    with plates(n_perturbations, n_latent):
        shift = pyro.sample("shift", dist.Laplace(0.0, scale))  # [P, K]
    return shift


def horseshoe(n_perturbations: int, n_latent: int, *, global_scale: float = 1.0):
    """Horseshoe shrinkage (Carvalho et al. 2010).

    ::

        tau         ~ HalfCauchy(global_scale)          # global shrinkage
        lam[p, k]   ~ HalfCauchy(1)                     # local shrinkage
        shift[p, k] ~ Normal(0, tau * lam[p, k])
    """
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(global_scale)))  # []
    with plates(n_perturbations, n_latent):
        lam = pyro.sample("lam", dist.HalfCauchy(torch.ones(())))  # [P, K]
        shift = pyro.sample("shift", dist.Normal(0.0, tau * lam))  # [P, K]
    return shift


def none(n_perturbations: int, n_latent: int):
    """No perturbation information: every cell has prior ``Normal(0, 1)`` (a plain VAE)."""
    return torch.zeros(n_perturbations, n_latent)


PRIORS = {
    "spike_and_slab": spike_and_slab,
    "beta_spike_and_slab": beta_spike_and_slab,
    "relaxed_bernoulli": relaxed_bernoulli,
    "gaussian": gaussian,
    "laplace": laplace,
    "horseshoe": horseshoe,
    "none": none,
}


def _base(prior: Callable) -> Callable:
    while isinstance(prior, functools.partial):
        prior = prior.func
    return prior


def resolve_prior(prior: Union[str, Callable], n_cells=None, **options) -> Callable:
    """A prior function from a name in :data:`PRIORS` or a callable, with ``options`` bound.

    ``n_cells`` (training cells per perturbation) is bound when the prior takes it. Raises
    ``ValueError`` for an unknown name (listing the valid ones) and ``TypeError`` for an option
    the prior does not take.
    """
    if isinstance(prior, str):
        if prior not in PRIORS:
            raise ValueError(f"Unknown prior {prior!r}; expected one of {sorted(PRIORS)} or a function.")
        prior = PRIORS[prior]
    if not callable(prior):
        raise TypeError(f"prior must be a name in {sorted(PRIORS)} or a function, but got {type(prior).__name__}.")
    accepted = inspect.signature(prior).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    if options:
        unknown = sorted(set(options) - set(accepted)) if not takes_any else []
        if unknown:
            raise TypeError(f"prior {prior_name(prior)!r} does not take options {unknown}; it takes {list(accepted)[2:]}.")
        prior = functools.partial(prior, **options)
    if n_cells is not None and "n_cells" in accepted:
        # an array, not a tensor: made a tensor inside the prior, on the device it runs on
        prior = functools.partial(prior, n_cells=np.asarray(n_cells, dtype=np.float32))
    return prior


def prior_name(prior: Callable) -> str:
    """The registry name of a prior, else its import path ``module:qualname``."""
    base = _base(prior)
    for name, fn in PRIORS.items():
        if fn is base:
            return name
    return f"{getattr(base, '__module__', '?')}:{getattr(base, '__qualname__', repr(base))}"
