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

__all__ = ["Encoder", "Decoder", "Networks"]


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
    """``q(z | x, batch)``: log1p counts -> (loc, scale), each ``[n_cells, n_latent]``."""

    def __init__(self, n_genes: int, n_latent: int, n_hidden: int, n_layers: int, n_batches: int = 0):
        super().__init__()
        self.n_batches = n_batches
        self.body = _mlp(n_genes + n_batches, n_hidden, n_layers)
        self.loc = nn.Linear(n_hidden, n_latent)
        self.scale = nn.Linear(n_hidden, n_latent)

    def forward(self, counts: torch.Tensor, batch: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.body(_with_batch(torch.log1p(counts), batch, self.n_batches))
        # softplus keeps the scale positive without exp's overflow; the floor keeps KL finite.
        return self.loc(h), F.softplus(self.scale(h)) + 1e-4


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

    def __init__(self, n_genes: int, n_latent: int, n_hidden: int = 128, n_layers: int = 2, n_batches: int = 0, zero_inflated: bool = False):
        super().__init__()
        self.n_genes, self.n_latent, self.n_batches = n_genes, n_latent, n_batches
        self.encoder = Encoder(n_genes, n_latent, n_hidden, n_layers, n_batches)
        self.decoder = Decoder(n_latent, n_genes, n_hidden, n_layers, n_batches, zero_inflated)
