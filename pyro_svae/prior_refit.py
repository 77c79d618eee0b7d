"""The prior's guide fitted to convergence with the networks held fixed: the last step of ``fit``.

Early stopping keeps the networks of the epoch with the best validation ELBO, and with them the
prior's guide parameters of that epoch, which may still be moving. On a screen of few cells per
perturbation the best epoch comes a few hundred steps into the sparse stage, and the inclusion
probabilities of entries that are no target are then still near where they started (on a grid
screen of 27 cells per perturbation every such entry sat at 0.13, where the ELBO's optimum is below
0.001). The validation ELBO cannot see this: it is the cells' part of the ELBO, which the prior's
own KL terms do not enter.

With the encoder fixed, the ELBO's terms that depend on the prior's sites are the prior's own
(``-KL(q || p)`` of each site) and, for each cell ``i`` of label ``u``,
``-KL(q(z_i | x_i) || N(delta_u, I)) - sum(variance_u) / 2``. Up to terms free of ``delta``, the
cells' part is ``sum_u delta_u . S_u - n_u (|delta_u|^2 + sum(variance_u)) / 2``, with ``S_u`` the sum
of the encoder means of the ``n_u`` cells of label ``u``: the decoder does not enter, and these
statistics are computed once. Adam then runs on the prior's guide parameters alone, on the
training cells (those whose number the prior's sparsity is scaled by), so the inclusion
probabilities are the variational posterior of each mask given those cells of its perturbation
and the networks. A conjugate encoder's means depend on the shifts too: they are taken at the
current posterior mean shifts and held fixed, a coordinate step on the ELBO.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .factory import Components
from .model import cell_shifts
from .guide import encode
from .objective import global_elbo, run_prior, shift_moments
from .posterior import expected_shifts
from .runtime import DataOnDevice, param_scope

__all__ = ["refit_prior", "REFIT_STEPS"]

#: Adam steps of :func:`refit_prior` (each costs one call of the prior, no network), its learning
#: rate falling geometrically from ``REFIT_LR[0]`` to ``REFIT_LR[1]``: the entries far from their
#: optimum move fast (a logit of -2 reaches -10 in a few hundred steps) and the last steps average
#: out the noise of the sites' draws.
REFIT_STEPS = 500
REFIT_LR = (0.05, 0.005)


def label_statistics(components: Components, screen, device, cells=None, batch_size: int = 1024, shifts=None):
    """``(codes [U, M], n [U], sum of encoder means [U, K])`` per distinct label of the screen's
    cells (``cells``: positions, default all); ``shifts`` ``[P, K]`` are those a conjugate encoder is given."""
    cells = np.arange(screen.n_cells) if cells is None else np.asarray(cells)
    codes, inverse = np.unique(np.asarray(screen.perturbations)[cells], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = torch.zeros(len(codes), components.config.n_latent, device=device)
    data = DataOnDevice(screen, device)
    nets = components.nets
    was_training = nets.training
    nets.eval()
    with torch.no_grad():
        for start in range(0, len(cells), batch_size):
            batch = data.minibatch(cells[start:start + batch_size])
            loc = encode(nets, batch, shifts).mean  # [B, K]
            sums.index_add_(0, torch.as_tensor(inverse[start:start + batch_size], device=device), loc)
    nets.train(was_training)
    counts = torch.as_tensor(np.bincount(inverse, minlength=len(codes)), dtype=sums.dtype, device=device)
    return torch.as_tensor(codes, device=device), counts, sums


def prior_objective(components: Components, codes, counts, sums, device) -> torch.Tensor:
    """The ELBO's terms that depend on the prior's sites, at one draw of them (a scalar to maximise)."""
    result, records = run_prior(components, device, 1.0)
    delta, variance = shift_moments(result, device)
    shift = cell_shifts(delta, codes)  # [U, K]
    cells = (shift * sums).sum() - 0.5 * (counts * shift.pow(2).sum(-1)).sum()
    if variance is not None:
        cells = cells - 0.5 * (counts * cell_shifts(variance, codes).sum(-1)).sum()
    return global_elbo(records).to(device) + cells


def refit_prior(components: Components, params: dict, screen, device, cells=None, steps: int = REFIT_STEPS,
                lr: tuple = REFIT_LR, seed: Optional[int] = None) -> int:
    """Optimise the prior's guide parameters in ``params`` (in place) with the networks fixed, on the
    screen's ``cells`` (positions; ``fit`` passes its training cells, those the prior's ``n_cells`` counts).

    Returns the number of steps taken (0 when the prior has no guide parameters).
    """
    names = {name for site in components.sites for name in site.params.values()}
    if not names or steps <= 0:
        return 0
    with param_scope(params) as store:
        shifts = expected_shifts(components, device)  # None unless the encoder is conjugate
        codes, counts, sums = label_statistics(components, screen, device, cells, shifts=shifts)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            prior_objective(components, codes, counts, sums, device)  # creates any parameter not yet made
        leaves = [value.requires_grad_(True) for name, value in store.named_parameters() if name in names]
        optimizer = torch.optim.Adam(leaves, lr=lr[0])
        decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=(lr[1] / lr[0]) ** (1.0 / steps))
        for _ in range(steps):
            optimizer.zero_grad()
            loss = -prior_objective(components, codes, counts, sums, device)
            loss.backward()
            optimizer.step()
            decay.step()
    return steps
