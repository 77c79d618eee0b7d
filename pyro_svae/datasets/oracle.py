"""How much a simulated screen's counts say about its latents: the posterior under the true model.

For a screen of :func:`~pyro_svae.datasets.simulate`, the simulator's own decoder, shifts,
dispersion and library sizes define the exact posterior ``p(z_i | x_i, a_i)`` of each cell's
latents given its counts and its perturbation label. Its mean ``E[z_k | x, a]`` has the largest
correlation with ``z_k`` that any function of the data can reach (the correlation ratio), so the
mean over latents of ``corr(E[z_k | x, a], z_k)`` bounds the latent MCC of every method, this
package's fits included: a screen whose bound is below 0.9 cannot meet an MCC bar of 0.9. It
conditions on the true library sizes and on the label, more than a model sees, so it is an upper
bound, not an estimate of what a fit should reach.

The posterior mean is computed by self-normalised importance sampling from a Laplace
approximation: the MAP of each cell (Adam on the log joint), the Hessian there (eigenvalues
floored), and a Gaussian proposal slightly wider than it, mixed with the prior. The same weights
estimate each cell's log evidence ``log p(x | a)`` under the true model (every constant
included), to set against a fitted model's IWELBO on the same cells: which of the two the
likelihood prefers. :func:`true_elbo` is the true model's ELBO with the best mean-field Gaussian
of each cell (what a fit's guide family could reach for the truth): which of the two the ELBO,
the objective a fit maximises, prefers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .simulation import decode, decoder_of

__all__ = ["TruePosterior", "true_elbo", "true_posterior", "true_prior_mean"]


class TruePosterior(NamedTuple):
    """Per cell: the posterior mean and MAP of ``z`` ``[n_cells, n_latent]``, the effective sample
    size ``[n_cells]`` of the importance sampler (out of ``n_samples``), and the estimate of the log
    evidence ``log p(x | a)`` ``[n_cells]`` (log of the mean importance weight; low by Jensen's
    inequality, the less so the larger the ESS)."""

    mean: np.ndarray
    map: np.ndarray
    ess: np.ndarray
    log_evidence: np.ndarray


def _require(adata, where: str, key: str):
    store = getattr(adata, where)
    if key not in store:
        raise KeyError(f"Expected adata.{where}[{key!r}] (written by pyro_svae.datasets.simulate), but the "
                       f"AnnData has only {sorted(store.keys())}.")
    return store[key]


def true_prior_mean(adata) -> np.ndarray:
    """The simulator's shift of each cell, ``[n_cells, n_latent]``: zero for controls, the sum of the
    members' shifts (plus the interaction term) for combinations."""
    shifts = np.asarray(_require(adata, "uns", "true_shifts"), float)
    names = [str(n) for n in _require(adata, "uns", "perturbation_names")]
    rows = {name: shifts[i] for i, name in enumerate(names)}
    rows["control"] = np.zeros(shifts.shape[1])
    for c, label in enumerate(adata.uns.get("combinations", [])):
        a, b = str(label).split("+")
        rows[str(label)] = rows[a] + rows[b] + np.asarray(adata.uns["interaction_shifts"], float)[c]
    labels = np.asarray(adata.obs["perturbation"]).astype(str)
    unknown = sorted(set(labels) - set(rows))
    if unknown:
        raise ValueError(f"Expected obs['perturbation'] labels among the simulated ones, but got {unknown[:5]}.")
    return np.stack([rows[label] for label in labels])


class _TrueModel:
    """The log joint ``log p(x, z | a)`` of the simulator, up to terms free of ``z``."""

    def __init__(self, adata, dtype=torch.float64):
        decoder = _require(adata, "uns", "true_decoder")
        self.decoder = decoder_of(adata, convert=lambda array: torch.as_tensor(array, dtype=dtype))
        self.logit_scale = float(decoder["logit_scale"])
        self.baseline = torch.as_tensor(np.asarray(decoder["baseline"], float), dtype=dtype)
        self.theta = float(_require(adata, "uns", "true_dispersion"))

    def log_joint(self, z, counts, log_library, prior_mean):
        """``z`` ``[..., n, K]``; ``counts`` ``[n, G]``; ``log_library`` ``[n]``; returns ``[..., n]``."""
        logits = decode(z, **self.decoder) / self.logit_scale + self.baseline
        log_mu = torch.log_softmax(logits, dim=-1) + log_library[:, None]
        if np.isinf(self.theta):  # Poisson
            log_lik = counts * log_mu - log_mu.exp()
        else:  # NB, inverse dispersion theta: x log mu - (x + theta) log(theta + mu)
            log_lik = counts * log_mu - (counts + self.theta) * torch.logaddexp(log_mu, log_mu.new_tensor(self.theta).log())
        return log_lik.sum(-1) - 0.5 * ((z - prior_mean) ** 2).sum(-1)

    def log_constant(self, counts):
        """The terms of ``log p(x, z | a)`` free of ``z`` ``[n]``: the count distribution's (lgamma)
        normalisers; the prior's ``-K/2 log 2 pi`` cancels the proposal's."""
        if np.isinf(self.theta):
            return -torch.lgamma(counts + 1).sum(-1)
        theta = counts.new_tensor(self.theta)
        return (torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1)
                + theta * theta.log()).sum(-1)


def _inputs(adata, library: str):
    """``(true model, prior means, counts, log libraries)`` of every cell, in float64."""
    if library not in ("true", "observed"):
        raise ValueError(f"Expected library to be 'true' or 'observed', but got {library!r}.")
    true_model = _TrueModel(adata)
    prior_mean = torch.as_tensor(true_prior_mean(adata))
    counts = torch.as_tensor(np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, float))
    if library == "true":
        log_library = torch.as_tensor(np.log(np.asarray(_require(adata, "obs", "true_library"), float)))
    else:  # the total count, floored at 1 as the model's minibatches do
        log_library = counts.sum(-1).clamp(min=1.0).log()
    return true_model, prior_mean, counts, log_library


def _laplace(true_model, counts, log_library, prior_mean, map_steps, floor):
    z = prior_mean.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=0.05)
    for _ in range(map_steps):
        optimizer.zero_grad()
        (-true_model.log_joint(z, counts, log_library, prior_mean).sum()).backward()
        optimizer.step()
    z = z.detach()

    def one_cell(zi, xi, li, mi):
        return true_model.log_joint(zi[None], xi[None], li[None], mi[None])[0]

    hessian = torch.func.vmap(torch.func.hessian(one_cell))(z, counts, log_library, prior_mean)  # [n, K, K]
    values, vectors = torch.linalg.eigh(-hessian)
    return z, vectors, values.clamp(min=floor)


def true_posterior(adata, n_samples: int = 512, map_steps: int = 400, widen: float = 1.1, chunk: int = 500,
                   seed: int = 0, library: str = "true", defensive: float = 0.1) -> TruePosterior:
    """The posterior of each cell's latents under the simulator's own model (see the module docstring).

    Parameters
    ----------
    adata : AnnData
        A screen of :func:`~pyro_svae.datasets.simulate` (``uns["true_decoder"]``, ``uns["true_shifts"]``,
        ``uns["true_dispersion"]``, ``obs["true_library"]``), unmodified.
    n_samples : int
        Importance samples per cell.
    map_steps : int
        Adam steps (learning rate 0.05) to the MAP of each cell.
    widen : float
        The proposal's standard deviations over the Laplace approximation's (>= 1: heavier tails
        than the posterior keep the weights bounded).
    chunk : int
        Cells per batch (memory: ``chunk * n_samples * n_genes`` numbers).
    library : {"true", "observed"}
        The library sizes the counts' means scale with: the simulator's draws (``obs["true_library"]``)
        or each cell's total count, as a fitted model uses (a fair comparison of evidence with one).
    defensive : float
        The share of the importance samples drawn from the prior ``N(shift, I)`` instead of the
        Laplace approximation (weights use the mixture's density, so estimates stay unbiased).

    Returns
    -------
    TruePosterior
        ``mean`` and ``map`` ``[n_cells, n_latent]``; ``ess`` and ``log_evidence`` ``[n_cells]``.
    """
    if n_samples < 1 or map_steps < 0 or widen < 1 or chunk < 1 or not 0 <= defensive < 1:
        raise ValueError(f"Expected n_samples >= 1, map_steps >= 0, widen >= 1, chunk >= 1 and 0 <= defensive < 1, "
                         f"but got {n_samples}, {map_steps}, {widen}, {chunk} and {defensive}.")
    true_model, prior_mean_all, counts_all, log_library_all = _inputs(adata, library)
    generator = torch.Generator().manual_seed(seed)
    means, maps, ess, evidence = [], [], [], []
    for start in range(0, counts_all.shape[0], chunk):
        part = slice(start, start + chunk)
        counts, log_library, prior_mean = counts_all[part], log_library_all[part], prior_mean_all[part]
        z_map, vectors, precisions = _laplace(true_model, counts, log_library, prior_mean, map_steps, floor=0.5)
        scales = widen / precisions.sqrt()  # [n, K] along the eigenvectors
        # a defensive mixture (Hesterberg 1995): a share of the draws from the prior bounds every weight
        # by the likelihood over that share, where the Laplace approximation misses a mode
        n_prior = int(round(defensive * n_samples))
        draws = torch.randn((n_samples,) + z_map.shape, generator=generator, dtype=z_map.dtype)  # [S, n, K]
        samples = torch.cat([prior_mean + draws[:n_prior],
                             z_map + torch.einsum("nij,snj->sni", vectors, draws[n_prior:] * scales)])
        with torch.no_grad():
            noise = torch.einsum("nji,snj->sni", vectors, samples - z_map) / scales  # the Laplace draws' noise
            log_q = torch.logsumexp(torch.stack([  # log q(z) + K/2 log 2 pi, the mixture's density
                np.log(max(defensive, 1e-300)) - 0.5 * ((samples - prior_mean) ** 2).sum(-1),
                np.log1p(-defensive) - 0.5 * (noise ** 2).sum(-1) - scales.log().sum(-1)]), dim=0)  # [S, n]
            # log p(x, z | a) - log q(z), the 2 pi terms of prior and proposal cancelled
            log_w = true_model.log_joint(samples, counts, log_library, prior_mean) + true_model.log_constant(counts) - log_q
        weights = torch.softmax(log_w, dim=0)  # [S, n]
        means.append((weights[..., None] * samples).sum(0))
        maps.append(z_map)
        ess.append(1.0 / (weights ** 2).sum(0))
        evidence.append(torch.logsumexp(log_w, dim=0) - np.log(n_samples))
    return TruePosterior(*(torch.cat(part).numpy() for part in (means, maps, ess, evidence)))


def true_elbo(adata, steps: int = 300, n_draws: int = 16, n_eval: int = 256, chunk: int = 500, seed: int = 0,
              library: str = "observed", covariance: str = "diagonal") -> np.ndarray:
    """Each cell's ELBO under the simulator's own model with its best Gaussian ``q(z)`` ``[n_cells]``.

    ``E_q[log p(x | z)] - KL(q || p(z | a))`` (every constant included, as :func:`true_posterior`'s
    ``log_evidence``), ``q = N(m, L L^T)`` fitted per cell by Adam (learning rate 0.02, ``steps`` steps
    of ``n_draws`` reparameterised draws) from the Laplace approximation and scored on ``n_eval`` fresh
    draws. ``covariance="diagonal"``: a mean-field ``q``, the family of a fit's guide, started from the MAP
    and ``1 / diag(precision)``; its gap to the log evidence is what that family costs the truth.
    ``"full"``: any covariance (``L`` lower triangular), started from the Laplace approximation itself.
    ``library`` as in :func:`true_posterior`.
    """
    if steps < 0 or n_draws < 1 or n_eval < 1 or chunk < 1:
        raise ValueError(f"Expected steps >= 0 and n_draws, n_eval, chunk >= 1, but got {steps}, {n_draws}, "
                         f"{n_eval} and {chunk}.")
    if covariance not in ("diagonal", "full"):
        raise ValueError(f"Expected covariance to be 'diagonal' or 'full', but got {covariance!r}.")
    true_model, prior_mean_all, counts_all, log_library_all = _inputs(adata, library)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, counts_all.shape[0], chunk):
        part = slice(start, start + chunk)
        counts, log_library, prior_mean = counts_all[part], log_library_all[part], prior_mean_all[part]
        z_map, vectors, precisions = _laplace(true_model, counts, log_library, prior_mean, 400, floor=0.5)
        if covariance == "full":
            tril = torch.linalg.cholesky(torch.einsum("nij,nj,nkj->nik", vectors, 1 / precisions, vectors))
            log_diagonal = tril.diagonal(dim1=-2, dim2=-1).log()
        else:  # the mean-field Gaussian closest to the Laplace approximation: 1 / diag(precision matrix)
            tril = torch.zeros(z_map.shape + z_map.shape[-1:], dtype=z_map.dtype)
            log_diagonal = -0.5 * torch.einsum("nij,nj->ni", vectors ** 2, precisions).log()
        mean, log_diagonal = z_map.clone().requires_grad_(True), log_diagonal.requires_grad_(True)
        below = torch.tril(tril, -1).requires_grad_(covariance == "full")  # zero and fixed for a mean-field q

        def elbo(n):  # [n_cells]: E_q[log p(x | z)] by Monte Carlo less KL(q || N(shift, I)) exactly
            scale = torch.tril(below, -1) + torch.diag_embed(log_diagonal.exp())  # L [n, K, K]
            draws = torch.randn((n,) + mean.shape, generator=generator, dtype=mean.dtype)
            z = mean + torch.einsum("nij,snj->sni", scale, draws)
            log_lik = true_model.log_joint(z, counts, log_library, prior_mean) + 0.5 * ((z - prior_mean) ** 2).sum(-1)
            kl = 0.5 * ((scale ** 2).sum((-1, -2)) + ((mean - prior_mean) ** 2).sum(-1) - mean.shape[-1]) \
                - log_diagonal.sum(-1)
            return log_lik.mean(0) + true_model.log_constant(counts) - kl

        optimizer = torch.optim.Adam([mean, log_diagonal] + ([below] if covariance == "full" else []), lr=0.02)
        for _ in range(steps):
            optimizer.zero_grad()
            (-elbo(n_draws).sum()).backward()
            optimizer.step()
        with torch.no_grad():
            out.append(elbo(n_eval))
    return torch.cat(out).numpy()
