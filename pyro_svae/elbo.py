"""The per-cell ELBO at one draw of the global sites, for monitoring and :meth:`SVAE.elbo`."""

from __future__ import annotations

from typing import Callable

import torch
from pyro import poutine

__all__ = ["local_elbo"]


def local_elbo(model_fn: Callable, guide_fn: Callable, batch: dict) -> torch.Tensor:
    """Per-cell ELBO ``log p(x | z) - KL(q(z | x) || p(z | delta))`` at one draw of the globals: ``[B]``."""
    guide_trace = poutine.trace(guide_fn).get_trace(**batch)
    model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(**batch)
    kl = torch.distributions.kl_divergence(guide_trace.nodes["z"]["fn"], model_trace.nodes["z"]["fn"])
    log_lik = model_trace.nodes["counts"]["fn"].log_prob(batch["counts"])
    if "shift_variance" in model_trace.nodes:  # masks integrated out: E_mask[log p(z | delta)]
        kl = kl - model_trace.nodes["shift_variance"]["fn"].log_factor
    return log_lik - kl
