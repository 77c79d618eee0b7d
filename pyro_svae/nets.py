"""Encoder and decoder networks.

Both are multilayer perceptrons (Linear -> LayerNorm -> ReLU), with the batch one-hot encoded
and concatenated to the input when the screen has batches. LayerNorm rather than BatchNorm keeps
a cell's output independent of the rest of its minibatch, so training and inference agree.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ENCODERS", "Encoder", "Decoder", "Networks"]

#: The family of ``q(z | ...)``: ``"counts"`` a diagonal Gaussian of the cell's counts (and batch);
#: ``"conjugate"`` a diagonal Gaussian factor of the counts times the cell's prior ``N(shift, I)``;
#: ``"full"`` a Gaussian of the counts with a full covariance (a lower-triangular scale).
ENCODERS = ("counts", "conjugate", "full")


def _mlp(n_in: int, n_hidden: int, n_layers: int) -> nn.Sequential:
    layers = []
    for i in range(n_layers):
        layers += [nn.Linear(n_in if i == 0 else n_hidden, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU()]
    return nn.Sequential(*layers)


def _with_batch(x: torch.Tensor, batch: Optional[torch.Tensor], n_batches: int) -> torch.Tensor:
    if n_batches == 0:
        return x
    onehot = F.one_hot(batch, n_batches).to(x.dtype)  # [..., B, n_batches]
    return torch.cat([x, onehot.expand(x.shape[:-1] + (n_batches,))], dim=-1)


class Encoder(nn.Module):
    """``q(z | x, batch)``: log1p counts -> (loc, scale), each ``[n_cells, n_latent]``.

    With ``conjugate=True``, ``q(z | x, batch, a)``: the network's output is a Gaussian factor of the
    counts, mean ``m`` and precision ``r`` (a recognition potential, Johnson et al. 2016), and ``q`` is
    that factor times the cell's prior ``N(prior_loc, I)``, normalised::

        q(z | x, a) = N((r m + prior_loc) / (r + 1), 1 / (r + 1))

    which is the exact posterior when the counts' likelihood is that Gaussian. A cell whose counts say
    little (``r`` small) keeps its perturbation's shift; the counts need not re-derive it.

    With ``full_covariance=True`` the scale is a lower-triangular ``[n_cells, n_latent, n_latent]``
    (positive diagonal; the off-diagonal head starts at zero, so ``q`` starts mean-field): the
    latents of a cell may be correlated a posteriori, as they are under a decoder that mixes them.
    """

    def __init__(self, n_genes: int, n_latent: int, n_hidden: int, n_layers: int, n_batches: int = 0,
                 conjugate: bool = False, full_covariance: bool = False):
        super().__init__()
        if conjugate and full_covariance:
            raise ValueError("An encoder is conjugate or has a full covariance, not both.")
        self.n_batches, self.conjugate, self.full_covariance = n_batches, conjugate, full_covariance
        self.body = _mlp(n_genes + n_batches, n_hidden, n_layers)
        self.loc = nn.Linear(n_hidden, n_latent)
        self.scale = nn.Linear(n_hidden, n_latent)
        if full_covariance:
            self.tril = nn.Linear(n_hidden, n_latent * (n_latent - 1) // 2)
            nn.init.zeros_(self.tril.weight)
            nn.init.zeros_(self.tril.bias)
            self.register_buffer("tril_index", torch.tril_indices(n_latent, n_latent, offset=-1), persistent=False)

    def forward(self, counts: torch.Tensor, batch: Optional[torch.Tensor] = None,
                prior_loc: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q`` (``scale`` lower-triangular ``[..., K, K]`` with a full covariance);
        ``prior_loc`` (the cells' prior means, ``[..., n_cells, n_latent]``) is required by a conjugate
        encoder and ignored by the others."""
        h = self.body(_with_batch(torch.log1p(counts), batch, self.n_batches))
        if not self.conjugate:
            # softplus keeps the scale positive without exp's overflow; the floor keeps KL finite.
            scale = F.softplus(self.scale(h)) + 1e-4
            if not self.full_covariance:
                return self.loc(h), scale
            tril = torch.diag_embed(scale)
            tril[..., self.tril_index[0], self.tril_index[1]] = self.tril(h)
            return self.loc(h), tril
        if prior_loc is None:
            raise ValueError("A conjugate encoder combines the counts with each cell's prior: pass prior_loc "
                             "(the cells' prior means, [n_cells, n_latent]), but got None.")
        precision = F.softplus(self.scale(h))  # [B, K] of the counts' factor
        total = precision + 1.0
        return (precision * self.loc(h) + prior_loc) / total, total.rsqrt()


class Decoder(nn.Module):
    """``p(x | z, batch)`` means: z -> gene log-proportions ``[..., n_cells, n_genes]``.

    With ``zero_inflated=True`` it also returns zero-inflation gate logits of the same shape.
    """

    def __init__(self, n_latent: int, n_genes: int, n_hidden: int, n_layers: int, n_batches: int = 0, zero_inflated: bool = False):
        super().__init__()
        self.n_batches = n_batches
        self.body = _mlp(n_latent + n_batches, n_hidden, n_layers)
        self.logits = nn.Linear(n_hidden, n_genes)
        self.gate = nn.Linear(n_hidden, n_genes) if zero_inflated else None

    def forward(self, z: torch.Tensor, batch: Optional[torch.Tensor] = None):
        h = self.body(_with_batch(z, batch, self.n_batches))
        log_proportions = torch.log_softmax(self.logits(h), dim=-1)
        gate_logits = None if self.gate is None else self.gate(h)
        return log_proportions, gate_logits


class Networks(nn.Module):
    """The encoder and decoder of one model, with the sizes they were built for."""

    def __init__(self, n_genes: int, n_latent: int, n_hidden: int = 128, n_layers: int = 2, n_batches: int = 0,
                 zero_inflated: bool = False, encoder: str = "counts"):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"Expected encoder to be one of {list(ENCODERS)}, but got {encoder!r}.")
        self.n_genes, self.n_latent, self.n_batches = n_genes, n_latent, n_batches
        self.encoder = Encoder(n_genes, n_latent, n_hidden, n_layers, n_batches, conjugate=encoder == "conjugate",
                               full_covariance=encoder == "full")
        self.decoder = Decoder(n_latent, n_genes, n_hidden, n_layers, n_batches, zero_inflated)
