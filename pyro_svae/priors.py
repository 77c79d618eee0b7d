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

A site may ask for a point estimate instead of a distribution with
``infer={"guide": "delta"}`` (MAP, as for the inclusion probabilities of :func:`spike_and_slab`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, NamedTuple, Optional, Union

import pyro
import pyro.distributions as dist
import torch

__all__ = [
    "ShiftMoments",
    "PERTURBATIONS_DIM",
    "LATENTS_DIM",
    "plates",
    "spike_and_slab",
    "relaxed_bernoulli",
    "gaussian",
    "laplace",
    "horseshoe",
    "none",
    "PRIORS",
    "resolve_prior",
    "prior_name",
]

PERTURBATIONS_DIM = -2
LATENTS_DIM = -1


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


@contextlib.contextmanager
def plates(n_perturbations: int, n_latent: int):
    """The ``perturbations`` x ``latents`` plates: sites inside have shape ``[P, K]``."""
    with pyro.plate("perturbations", n_perturbations, dim=PERTURBATIONS_DIM):
        with pyro.plate("latents", n_latent, dim=LATENTS_DIM):
            yield


def spike_and_slab(n_perturbations: int, n_latent: int, *, sparsity: float = 50.0, slab_scale: float = 5.0,
                   collapsed: bool = True):
    """Spike-and-slab shifts, the paper's sVAE+ prior.

    ::

        pi[p, k]    ~ Beta(1, sparsity)          # inclusion probability (point estimate)
        mask[p, k]  ~ Bernoulli(pi[p, k])        # is latent k a target of perturbation p?
        shift[p, k] ~ Normal(0, slab_scale)      # size of the shift when it is
        delta = mask * shift

    ``sparsity`` is the ``c`` of the paper's Beta(1, c): the larger, the fewer targets. As in the
    reference sVAE+ code and SAMS-VAE's reimplementation, ``pi`` is a point estimate and the
    variational distribution of the mask is ``Bernoulli(pi)`` itself, so the mask KL vanishes and
    the Beta log-density ``(c - 1) log(1 - pi)`` is the penalty that switches unneeded targets off.
    (A fully Bayesian ``pi`` would cost a target at most ``log(1 + c)`` nats, too little against
    thousands of cells to make the targets sparse.)

    With ``collapsed=True`` (default) the mask is integrated out in closed form
    (:class:`ShiftMoments`): the same objective as sampling it, without the straight-through
    estimator, whose gradient vanishes as ``pi -> 1`` and keeps inclusion probabilities from
    becoming decisive. The slab then follows the spike-and-slab variational family of Titsias and
    Lazaro-Gredilla (2011): ``q(shift | mask = 0)`` is the prior, so the slab's KL is weighted by
    ``pi`` (``poutine.scale``). Otherwise a target whose ``pi`` drops early has its shift pulled to 0
    and never comes back. ``collapsed=False`` samples a ``mask`` site with a straight-through guide
    and a mean-field slab, kept for comparison: on the package's simulator it recovers latents
    with MCC 0.78 instead of 0.90 (``benchmarks/results/ablation_sampled_mask.md``).
    """
    with plates(n_perturbations, n_latent):
        pi = pyro.sample("pi", dist.Beta(1.0, sparsity), infer={"guide": "delta", "init": 0.5})  # [P, K]
        if not collapsed:
            mask = pyro.sample("mask", dist.Bernoulli(pi), infer={"guide": "prior"})  # [P, K]
            shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
        else:
            with pyro.poutine.scale(scale=pi):  # the slab is paid for only when the target is on
                shift = pyro.sample("shift", dist.Normal(0.0, slab_scale))  # [P, K]
    if collapsed:
        return ShiftMoments(pi * shift, pi * (1 - pi) * shift**2, inclusion=pi)
    return mask * shift


def relaxed_bernoulli(
    n_perturbations: int, n_latent: int, *, sparsity: float = 50.0, slab_scale: float = 5.0, temperature: float = 0.5
):
    """Spike-and-slab with the mask as a relaxed (Concrete) Bernoulli site.

    ::

        pi[p, k]    ~ Beta(1, sparsity)                        # point estimate
        mask[p, k]  ~ RelaxedBernoulli(temperature, pi[p, k])  # in (0, 1)
        shift[p, k] ~ Normal(0, slab_scale)
        delta = mask * shift

    Model and guide both use the relaxed distribution, so the ELBO is that of the relaxed model
    (a straight-through guide against this prior would score the wrong density).
    """
    with plates(n_perturbations, n_latent):
        pi = pyro.sample("pi", dist.Beta(1.0, sparsity), infer={"guide": "delta", "init": 0.5})  # [P, K]
        mask = pyro.sample("mask", dist.RelaxedBernoulli(torch.tensor(temperature), probs=pi), infer={"guide": "prior"})  # [P, K]
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
    "relaxed_bernoulli": relaxed_bernoulli,
    "gaussian": gaussian,
    "laplace": laplace,
    "horseshoe": horseshoe,
    "none": none,
}


def resolve_prior(prior: Union[str, Callable], **options) -> Callable:
    """A prior function from a name in :data:`PRIORS` or a callable, with ``options`` bound.

    Raises ``ValueError`` for an unknown name (listing the valid ones) and ``TypeError`` for an
    option the prior does not take.
    """
    if isinstance(prior, str):
        if prior not in PRIORS:
            raise ValueError(f"Unknown prior {prior!r}; expected one of {sorted(PRIORS)} or a function.")
        prior = PRIORS[prior]
    if not callable(prior):
        raise TypeError(f"prior must be a name in {sorted(PRIORS)} or a function, but got {type(prior).__name__}.")
    if options:
        accepted = inspect.signature(prior).parameters
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise TypeError(f"prior {prior_name(prior)!r} does not take options {unknown}; it takes {list(accepted)[2:]}.")
        prior = functools.partial(prior, **options)
    return prior


def prior_name(prior: Callable) -> str:
    """The registry name of a prior, else its import path ``module:qualname``."""
    base = prior.func if isinstance(prior, functools.partial) else prior
    for name, fn in PRIORS.items():
        if fn is base:
            return name
    return f"{getattr(base, '__module__', '?')}:{getattr(base, '__qualname__', repr(base))}"

