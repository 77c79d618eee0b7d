"""ArviZ export: a fitted model, its posterior draws and its posterior predictive as ``InferenceData``.

``arviz.from_pyro`` takes MCMC output only, so the groups are built with ``arviz.from_dict``.
ArviZ 0.x (Python 3.10-3.11) takes the groups as keyword arguments and returns ``InferenceData``;
ArviZ 1.x takes one dict of groups and returns an xarray ``DataTree``: :func:`from_dict` hides it.
"""

from __future__ import annotations

import numpy as np
import torch
from pyro import poutine

from .guide import base_distribution, prior_guide
from .predictive import posterior_predictive, positions
from .priors import ShiftMoments
from .train import param_scope

__all__ = ["global_samples", "from_dict", "to_arviz"]


def global_samples(svae, num_samples: int) -> dict:
    """Guide draws of the prior's sites, with the effective shifts they imply.

    Returns
    -------
    dict of numpy arrays
        One entry per prior site ``[num_samples, *site.shape]``; ``delta`` ``[S, P, K]``, the
        effective shift (its mean over the mask where the prior integrates the mask out); and
        ``inclusion`` ``[S, P, K]``, the probability that each latent is a target, where the prior
        reports it (``ShiftMoments.inclusion`` or a ``mask`` site).
    """
    shape = (len(svae.perturbation_names), svae.config.n_latent)
    draws: dict = {}
    with param_scope(svae.params), torch.no_grad():
        for _ in range(num_samples):
            guide_trace = poutine.trace(prior_guide).get_trace(svae.prior_sites, svae.prior, shape, svae.device)
            delta = poutine.replay(svae.prior, trace=guide_trace)(*shape)
            values = {site.name: guide_trace.nodes[site.name]["value"] for site in svae.prior_sites}
            if isinstance(delta, ShiftMoments):  # masks integrated out
                if delta.inclusion is not None:
                    values["inclusion"] = delta.inclusion
                delta = delta.mean
            elif "mask" in guide_trace.nodes:
                # Bernoulli and relaxed Bernoulli alike: P(mask > 1/2) = probs (Rao-Blackwellised)
                values["inclusion"] = base_distribution(guide_trace.nodes["mask"]["fn"]).probs
            values["delta"] = delta
            for name, value in values.items():
                draws.setdefault(name, []).append(torch.as_tensor(value).detach().cpu().numpy())
    return {name: np.stack(values) for name, values in draws.items()}


def from_dict(groups: dict, coords: dict, dims: dict):
    """``arviz.from_dict`` for ArviZ 0.x (keyword groups) and 1.x (one dict of groups)."""
    import arviz as az

    if int(az.__version__.split(".")[0]) >= 1:
        return az.from_dict(groups, coords=coords, dims=dims)
    return az.from_dict(**groups, coords=coords, dims=dims)


def to_arviz(svae, adata=None, num_samples: int = 100, genes=None, cells=None, batch_size: int = 1024):
    """See :meth:`pyro_svae.SVAE.to_arviz`."""
    adata = svae.adata if adata is None else adata
    if adata is None:
        raise ValueError("No AnnData given and none kept from training (a loaded model): pass adata.")
    screen = svae._read(adata)
    cell_pos = positions(cells, screen.cell_names, "cells")
    gene_pos = positions(genes, svae.gene_names, "genes")
    replicated = posterior_predictive(svae, adata, num_samples, genes=gene_pos, cells=cell_pos, batch_size=batch_size,
                                      log_likelihood=True, return_latents=True, screen=screen)
    observed = screen.counts[cell_pos][:, gene_pos]
    observed = np.asarray(observed.toarray() if hasattr(observed, "toarray") else observed)
    labels = adata.obs[svae.config.perturbation_key].astype(str).to_numpy()[cell_pos]
    shape = (len(svae.perturbation_names), svae.config.n_latent)
    posterior = {name: value[None] for name, value in global_samples(svae, num_samples).items()}
    posterior["z"] = replicated["z"][None]
    dims = {name: ["perturbation", "latent"] for name, value in posterior.items() if value.shape[2:] == shape}
    dims.update(z=["cell", "latent"], counts=["cell", "gene"], perturbation_label=["cell"], library_size=["cell"])
    groups = {
        "posterior": posterior,
        "posterior_predictive": {"counts": replicated["counts"][None]},
        "log_likelihood": {"counts": replicated["log_likelihood"][None]},
        "observed_data": {"counts": observed},
        "constant_data": {"perturbation_label": labels, "library_size": screen.library[cell_pos]},
    }
    coords = {"perturbation": list(svae.perturbation_names), "latent": np.arange(svae.config.n_latent),
              "cell": np.asarray(screen.cell_names)[cell_pos], "gene": np.asarray(svae.gene_names)[gene_pos]}
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
