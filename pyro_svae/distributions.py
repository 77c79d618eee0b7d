"""Distributions of the package's own: a straight-through Bernoulli guide, and the mask of a
spike-and-slab integrated out under its variational Bernoulli."""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

__all__ = ["StraightThroughBernoulli", "InclusionProbability"]

#: Inclusion probabilities are kept this far from 0 and 1, where ``a log a`` has an infinite slope.
_EPS = 1e-6


class StraightThroughBernoulli(dist.Bernoulli):
    """Bernoulli whose ``rsample`` returns exact 0/1 values with the gradient of ``probs``.

    Being a subclass of ``Bernoulli`` it keeps the exact Bernoulli/Bernoulli KL.
    """

    has_rsample = True

    def rsample(self, sample_shape=torch.Size()):
        probs = self.probs.expand(self._extended_shape(sample_shape))
        hard = torch.bernoulli(probs.detach())
        return hard + (probs - probs.detach())  # exactly 0/1 forward, d(probs) backward


class InclusionProbability(dist.TorchDistribution):
    """The mask of a spike-and-slab, integrated out: a density on its inclusion probability ``a``.

    With ``mask ~ Bernoulli(sigmoid(logits))`` in the model and ``q(mask) = Bernoulli(a)`` in the
    guide, the ELBO's mask terms are ``E_q[log p(mask)] + H[q(mask)] = -KL(Bernoulli(a) ||
    Bernoulli(sigmoid(logits)))``. This distribution has that as its log-density (unnormalised:
    a constant apart from a normalised density on [0, 1]), so a point estimate of ``a`` under it
    (``infer={"guide": "delta"}``) optimises exactly the mean-field ELBO of the mask while the
    rest of the model uses the moments of ``mask`` (:class:`~pyro_svae.priors.ShiftMoments`).
    ``a`` is then the variational posterior probability that the mask is on. ``sample`` returns
    the mode, ``sigmoid(logits)`` (within ``1e-6`` of 0 and 1).
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.unit_interval

    def __init__(self, logits, validate_args=None):
        self.logits = torch.as_tensor(logits, dtype=torch.get_default_dtype())
        super().__init__(self.logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return InclusionProbability(self.logits.expand(batch_shape))

    def sample(self, sample_shape=torch.Size()):
        # kept in [_EPS, 1 - _EPS]: the prior odds of a perturbation with thousands of cells underflow
        return torch.sigmoid(self.logits).clamp(_EPS, 1 - _EPS).expand(self._extended_shape(sample_shape))

    def log_prob(self, value):
        a = value.clamp(_EPS, 1 - _EPS)
        cross_entropy = a * F.logsigmoid(self.logits) + (1 - a) * F.logsigmoid(-self.logits)
        entropy = -(a * torch.log(a) + (1 - a) * torch.log1p(-a))
        return cross_entropy + entropy
