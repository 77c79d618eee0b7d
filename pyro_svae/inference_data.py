"""ArviZ export: a fitted model, its posterior draws and its posterior predictive as ``InferenceData``.

``arviz.from_pyro`` takes MCMC output only, so the groups are built with ``arviz.from_dict``.
ArviZ 0.x (Python 3.10-3.11) takes the groups as keyword arguments and returns ``InferenceData``;
ArviZ 1.x takes one dict of groups and returns an xarray ``DataTree``: :func:`from_dict` hides it.
"""

from __future__ import annotations

import numpy as np
import torch

from .guide import encode
from .heldout import MAX_ELEMENTS, log_prior_z
from .likelihoods import count_distribution, dispersion_param
from .posterior import GlobalDraws, draw_globals
from .predictive import posterior_predictive
from .runtime import DataOnDevice

__all__ = ["from_dict", "to_arviz"]


def from_dict(groups: dict, coords: dict, dims: dict):
    """``arviz.from_dict`` for ArviZ 0.x (keyword groups) and 1.x (one dict of groups)."""
    import arviz as az

    if int(az.__version__.split(".")[0]) >= 1:
        return az.from_dict(groups, coords=coords, dims=dims)
    return az.from_dict(**groups, coords=coords, dims=dims)


def _log_likelihood(components, screen, device, draws, cells: np.ndarray, n_importance: int,
                    batch_size: int) -> np.ndarray:
    """``log p(x_i | g_s)`` ``[S, C]`` per global draw ``s``, ``z_i`` integrated out by importance
    sampling from the encoder: ``log (1/J) sum_j p(x_i | z_j) p(z_j | g_s) / q(z_j | x_i)``.

    The same ``J`` latents serve every draw (common random numbers: the draws' values differ by
    the prior term alone, not by independent importance-sampling noise), and the decoder, a point
    estimate, is evaluated once per latent. A conjugate encoder proposes at the draws' mean shifts."""
    data = DataOnDevice(screen, device)
    shifts = draws.delta.mean(0) if components.nets.encoder.conjugate else None  # [P, K]
    dispersion = dispersion_param(components.likelihood, components.nets.n_genes)
    out = np.empty((draws.n_draws, len(cells)), np.float64)
    size = max(1, min(batch_size, MAX_ELEMENTS // max(1, n_importance * screen.n_genes)))
    for start in range(0, len(cells), size):
        chunk = np.arange(start, min(start + size, len(cells)))
        batch = data.minibatch(cells[chunk])
        q = encode(components.nets, batch, shifts)
        z = q.sample((n_importance,))  # [J, B, K]
        counts = count_distribution(components.nets.decoder, components.likelihood, z, batch["batch"],
                                    batch["library"], dispersion)
        log_weight = counts.log_prob(batch["counts"]).sum(-1) - q.log_prob(z)  # [J, B]
        for s in range(draws.n_draws):
            one = GlobalDraws({}, *(None if t is None else t[s:s + 1].expand((n_importance,) + t.shape[1:])
                                    for t in draws[1:]))
            log_prior = log_prior_z(z, one, batch["perturbations"])  # [J, B]
            out[s, chunk] = (torch.logsumexp(log_weight + log_prior, 0) - np.log(n_importance)).double().cpu().numpy()
    return out


def to_arviz(components, screen, labels: np.ndarray, device, num_samples: int = 100, genes=None, cells=None,
             batch_size: int = 1024, log_likelihood: bool = False, n_importance: int = 100):
    """See :meth:`pyro_svae.SVAE.to_arviz` (inside the model's param scope; ``labels`` per cell of ``screen``).

    Groups: ``posterior`` (every prior site, ``delta`` the effective shifts and ``inclusion``
    where the prior has one, dims ``(perturbation, latent)``; ``z`` dims ``(cell, latent)``),
    ``posterior_predictive`` and ``observed_data`` (``counts``, dims ``(cell, gene)``),
    ``constant_data`` (``perturbation_label`` and ``library_size`` per cell). One chain of
    ``num_samples`` guide draws. With ``log_likelihood=True``, ``log_likelihood`` (``counts``,
    dims ``(cell,)``): ``log p(x_i | g_s)`` for each draw ``s`` of the global sites, the cell's
    latent integrated out by importance sampling (``n_importance`` latents shared by the draws), so that ``az.loo``
    leaves out cells given the prior's sites. The networks are point estimates: it ranks models
    by how well their priors and networks predict held-out cells, not by a full posterior.
    """
    replicated = posterior_predictive(components, screen, device, num_samples, genes, cells, batch_size)
    cell_pos, gene_pos = replicated["cells"], replicated["genes"]
    observed = screen.counts[cell_pos][:, gene_pos]
    observed = np.asarray(observed.toarray() if hasattr(observed, "toarray") else observed)
    shape = (components.n_perturbations, components.config.n_latent)
    draws = draw_globals(components, num_samples, device)
    posterior = {name: value.cpu().numpy()[None] for name, value in draws.sites.items()}
    posterior["delta"] = draws.delta.cpu().numpy()[None]
    if draws.inclusion is not None:
        posterior["inclusion"] = draws.inclusion.cpu().numpy()[None]
    posterior["z"] = replicated["z"][None]
    dims = {name: ["perturbation", "latent"] for name, value in posterior.items() if value.shape[2:] == shape}
    dims.update(z=["cell", "latent"], counts=["cell", "gene"], perturbation_label=["cell"], library_size=["cell"])
    groups = {
        "posterior": posterior,
        "posterior_predictive": {"counts": replicated["counts"][None]},
        "observed_data": {"counts": observed},
        "constant_data": {"perturbation_label": np.asarray(labels)[cell_pos], "library_size": screen.library[cell_pos]},
    }
    coords = {"perturbation": list(components.layout.perturbations), "latent": np.arange(components.config.n_latent),
              "cell": np.asarray(screen.cell_names)[cell_pos], "gene": np.asarray(components.layout.genes)[gene_pos]}
    if not log_likelihood:
        return from_dict(groups, coords, dims)
    with torch.no_grad():
        groups["log_likelihood"] = {"counts": _log_likelihood(components, screen, device, draws, cell_pos, n_importance,
                                                              batch_size)[None]}
    dims["log_likelihood_counts"] = ["cell"]
    return _with_log_likelihood_dims(groups, coords, dims)


def _with_log_likelihood_dims(groups: dict, coords: dict, dims: dict):
    # ``counts`` is (cell, gene) in the data groups but (cell,) in log_likelihood (the genes of a
    # cell are one observation, so that ``az.loo`` leaves out cells): one call per set of dims.
    import arviz as az

    dims = dict(dims)
    log_likelihood_dims = {"counts": dims.pop("log_likelihood_counts")}
    idata = from_dict({k: v for k, v in groups.items() if k != "log_likelihood"}, coords, dims)
    log_likelihood = from_dict({"log_likelihood": groups["log_likelihood"]}, coords, log_likelihood_dims)
    if int(az.__version__.split(".")[0]) >= 1:  # DataTree
        idata["log_likelihood"] = log_likelihood["log_likelihood"]
    else:
        idata.extend(log_likelihood)
    return idata
