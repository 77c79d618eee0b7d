"""The count likelihoods, each defined once, and the one path from latents to counts.

Training, the held-out likelihood, prediction, counterfactuals and posterior predictive checks
all score or sample counts through :func:`count_distribution`; adding a likelihood is one entry
in :data:`LIKELIHOODS` (as Pyro's CEVAE finds an outcome distribution by name).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

__all__ = ["CountLikelihood", "LIKELIHOODS", "NegativeBinomial", "get_likelihood", "count_distribution",
           "dispersion_param", "sample_counts"]

#: Initial inverse dispersion of the negative binomials.
INIT_DISPERSION = 5.0


class CountLikelihood(NamedTuple):
    """A count distribution of mean ``exp(log_mean)``: what it needs and how it is built."""

    name: str
    #: built from ``(log_mean, dispersion, gate_logits)``, each ``[..., n_cells, n_genes]`` or ``[n_genes]``
    build: Callable
    #: has a per-gene inverse dispersion ``theta`` (a parameter named ``dispersion``)
    has_dispersion: bool
    #: the decoder also returns zero-inflation gate logits
    zero_inflated: bool


class _BroadcastLgamma(torch.autograd.Function):
    """``lgamma`` of a broadcast tensor, computed once per distinct element.

    ``x`` is typically a per-gene ``theta`` ``[G]`` expanded to ``[B, G]`` (stride 0 along ``B``):
    ``lgamma`` and, backwards, ``digamma`` run on the ``[1, G]`` tensor it is a view of and are
    broadcast again. The values and the gradient are elementwise the same as those of
    ``torch.lgamma(x)``; each costs ``1 / B`` of the work.
    """

    @staticmethod
    def forward(ctx, x):
        # the repeated dims (stride 0) narrowed to one element
        compact = x[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in x.stride())]
        ctx.save_for_backward(compact)
        return torch.lgamma(compact).expand(x.shape)

    @staticmethod
    def backward(ctx, grad):
        (compact,) = ctx.saved_tensors
        return grad * torch.digamma(compact)


class NegativeBinomial(dist.NegativeBinomial):
    """Pyro's ``NegativeBinomial`` whose ``log_prob`` takes ``lgamma(total_count)`` once per distinct
    ``total_count`` (per gene, not per cell and gene): the same values and gradients, and about a
    sixth less work in a training step of a few thousand genes (the ``lgamma`` and ``digamma``
    of ``[n_cells, n_genes]`` it saves are a large part of the likelihood's cost)."""

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        log_unnormalized_prob = self.total_count * F.logsigmoid(-self.logits) + value * F.logsigmoid(self.logits)
        total = self.total_count + value
        log_normalization = -torch.lgamma(total) + torch.lgamma(1.0 + value) + _BroadcastLgamma.apply(self.total_count)
        # total_count == value == 0 has probability 1, where lgamma(0) is infinite (as in torch)
        log_normalization = log_normalization.masked_fill(total == 0.0, 0.0)
        return log_unnormalized_prob - log_normalization


def _poisson(log_mean, dispersion, gate_logits):
    return dist.Poisson(log_mean.exp())


def _negative_binomial(log_mean, dispersion, gate_logits):
    # mean mu and inverse overdispersion theta: variance mu + mu^2 / theta
    return NegativeBinomial(total_count=dispersion, logits=log_mean - torch.log(dispersion))


def _zero_inflated_negative_binomial(log_mean, dispersion, gate_logits):
    return dist.ZeroInflatedNegativeBinomial(total_count=dispersion, logits=log_mean - torch.log(dispersion),
                                             gate_logits=gate_logits)


LIKELIHOODS = {
    "nb": CountLikelihood("nb", _negative_binomial, has_dispersion=True, zero_inflated=False),
    "zinb": CountLikelihood("zinb", _zero_inflated_negative_binomial, has_dispersion=True, zero_inflated=True),
    "poisson": CountLikelihood("poisson", _poisson, has_dispersion=False, zero_inflated=False),
}


def get_likelihood(name: str) -> CountLikelihood:
    """The likelihood called ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in LIKELIHOODS:
        raise ValueError(f"Expected likelihood to be one of {tuple(LIKELIHOODS)}, but got {name!r}.")
    return LIKELIHOODS[name]


def dispersion_param(likelihood: CountLikelihood, n_genes: int, device=None) -> Optional[torch.Tensor]:
    """The per-gene inverse dispersion ``[G]`` (a parameter of the model), or ``None``."""
    if not likelihood.has_dispersion:
        return None
    return pyro.param("dispersion", lambda: torch.full((n_genes,), INIT_DISPERSION, device=device),
                      constraint=constraints.positive)


def count_distribution(decoder, likelihood: CountLikelihood, z: torch.Tensor, batch: Optional[torch.Tensor],
                       library: torch.Tensor, dispersion: Optional[torch.Tensor]) -> dist.Distribution:
    """Counts given latents: ``batch_shape [..., n_cells, n_genes]`` for ``z [..., n_cells, K]``.

    The mean is ``library * softmax(decoder(z, batch))``; ``library`` ``[n_cells]`` (floored at 1)
    and ``batch`` ``[n_cells]`` are shared by the leading sample dims of ``z``.
    """
    shape = z.shape[:-1]
    flat_batch = None if batch is None else batch.expand(shape).reshape(-1)
    log_proportions, gate_logits = decoder(z.reshape(-1, z.shape[-1]), flat_batch)
    log_proportions = log_proportions.reshape(shape + (-1,))
    gate_logits = None if gate_logits is None else gate_logits.reshape(shape + (-1,))
    log_mean = torch.log(library.clamp(min=1.0)).unsqueeze(-1) + log_proportions
    return likelihood.build(log_mean, dispersion, gate_logits)


def sample_counts(counts: dist.Distribution, seed: int) -> Optional[torch.Tensor]:
    """A draw of ``counts`` (a distribution of :data:`LIKELIHOODS`) from a generator of its own seeded
    with ``seed`` instead of torch's global generator, so that blocks of cells can be drawn on several
    threads at once and still reproducibly: counts of ``counts.batch_shape`` (e.g. ``[n_cells, n_genes]``)
    as float32 on the distribution's device, or ``None`` for any other distribution (the caller
    draws it with ``.sample()``).

    The same distribution as the distributions' own ``sample``: a negative binomial is Poisson with a
    Gamma(theta, theta / mu) rate; zero inflation sets a count to 0 with probability
    ``sigmoid(gate_logits)``. On the CPU the draws come from a :class:`numpy.random.Generator`
    (its float32 gamma sampler takes under half the time of torch's, and it releases the GIL); on
    other devices from a :class:`torch.Generator` there.
    """
    with torch.no_grad():
        device = _base(counts)
        if device is None:
            return None
        if device.type == "cpu":
            return torch.from_numpy(_draw_numpy(counts, np.random.default_rng(seed)))
        return _draw_torch(counts, torch.Generator(device=device).manual_seed(seed))


def _base(counts: dist.Distribution) -> Optional[torch.device]:
    """The device of a distribution :func:`sample_counts` draws, else ``None``."""
    if isinstance(counts, dist.ZeroInflatedDistribution):
        return _base(counts.base_dist)
    if isinstance(counts, torch.distributions.NegativeBinomial):
        return counts.logits.device
    if isinstance(counts, torch.distributions.Poisson):
        return counts.rate.device
    return None


def _array(values: torch.Tensor, shape) -> np.ndarray:
    """``values`` broadcast to ``shape``, as a float32 NumPy view (no copy where it is one already)."""
    return values.detach().to(torch.float32).expand(shape).numpy()


def _draw_numpy(counts: dist.Distribution, rng: np.random.Generator) -> np.ndarray:
    """:func:`sample_counts` on the CPU: float32 counts ``counts.batch_shape`` from ``rng``."""
    if isinstance(counts, dist.ZeroInflatedDistribution):
        values = _draw_numpy(counts.base_dist, rng)
        values[rng.random(values.shape, dtype=np.float32) < _array(counts.gate, values.shape)] = 0.0
        return values
    if isinstance(counts, torch.distributions.NegativeBinomial):
        concentration = _array(counts.total_count, counts.batch_shape)
        rate = rng.standard_gamma(concentration, dtype=np.float32)  # Gamma(theta, 1)
        rate *= _array(counts.logits.exp(), counts.batch_shape)  # ... times mu / theta
    else:
        rate = _array(counts.rate, counts.batch_shape)
    return rng.poisson(np.maximum(rate, np.finfo(np.float32).tiny)).astype(np.float32)


def _draw_torch(counts: dist.Distribution, generator: torch.Generator) -> torch.Tensor:
    """:func:`sample_counts` on other devices: counts ``counts.batch_shape`` from ``generator``."""
    if isinstance(counts, dist.ZeroInflatedDistribution):
        base = _draw_torch(counts.base_dist, generator)
        zero = torch.rand(base.shape, generator=generator, device=base.device, dtype=base.dtype) < counts.gate
        return base.masked_fill(zero, 0.0)
    if isinstance(counts, torch.distributions.NegativeBinomial):
        concentration = counts.total_count.expand(counts.batch_shape)
        rate = torch._standard_gamma(concentration, generator=generator) * counts.logits.exp()
        return torch.poisson(rate.clamp(min=torch.finfo(rate.dtype).tiny), generator=generator)
    return torch.poisson(counts.rate, generator=generator)
