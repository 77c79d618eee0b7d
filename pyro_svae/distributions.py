"""Distributions of the package's own: a straight-through Bernoulli guide, and the mask of a
spike-and-slab integrated out under its variational Bernoulli."""

from __future__ import annotations

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import Independent, MultivariateNormal, Normal, constraints, register_kl

__all__ = ["StraightThroughBernoulli", "InclusionProbability", "kl_mvn_diagonal"]

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


@register_kl(MultivariateNormal, Independent)
def kl_mvn_diagonal(p: MultivariateNormal, q: Independent) -> torch.Tensor:
    """``KL(N(m, L L^T) || N(mu, diag(s^2)))`` in closed form (a full-covariance encoder against the
    cells' prior ``Normal(delta, 1).to_event(1)``), so that ``TraceMeanField_ELBO`` takes it exactly::

        KL = (sum_kj L_kj^2 / s_k^2 + |(mu - m) / s|^2 - K) / 2 + sum log s - sum log L_kk
    """
    if not isinstance(q.base_dist, Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    scale = q.base_dist.scale.expand(q.base_dist.batch_shape)
    tril = p.scale_tril
    trace = (tril.pow(2).sum(-1) / scale.pow(2)).sum(-1)
    mahalanobis = ((q.base_dist.loc - p.loc) / scale).pow(2).sum(-1)
    log_det = scale.log().sum(-1) - tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - p.event_shape[-1]) + log_det
