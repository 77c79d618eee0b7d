"""Persistence: a fitted model as ``config.json`` and ``params.pt``, and building a model's
networks, prior and parameters from its configuration."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch

from .data import ScreenData
from .guide import inspect_prior
from .nets import Networks
from .priors import resolve_prior
from .result import SVAE, SVAEConfig
from .train import TrainConfig, local_elbo, param_scope

__all__ = ["save", "load", "build"]

#: Version of the file layout written by :func:`save`.
FORMAT = 1


def save(svae: SVAE, path, overwrite: bool = False) -> None:
    """Write ``svae`` to directory ``path``: ``config.json`` and ``params.pt`` (tensors only).

    ``params.pt`` is read back with ``torch.load(weights_only=True)``, which cannot run code;
    its SHA-256 is kept in ``config.json`` so a tampered or truncated file is refused.
    """
    from . import __version__

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it.")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in svae.params["params"].items()}
    torch.save(tensors, path / "params.pt")
    digest = hashlib.sha256((path / "params.pt").read_bytes()).hexdigest()
    document = {
        "format": FORMAT, "version": __version__, "config": asdict(svae.config),
        "train_config": asdict(svae.train_config), "gene_names": list(svae.gene_names),
        "perturbation_names": list(svae.perturbation_names),
        "batch_names": None if svae.batch_names is None else list(svae.batch_names),
        "history": svae.history.to_dict(orient="list"), "params_sha256": digest,
    }
    (path / "config.json").write_text(json.dumps(document, indent=1))

def build(config: SVAEConfig, screen: ScreenData, prior: Optional[Callable] = None):
    """Networks, prior function and prior sites for ``config`` on ``screen`` (parameters not created)."""
    from .priors import PRIORS

    if prior is None:
        if config.prior not in PRIORS:
            raise ValueError(f"This model uses the custom prior {config.prior!r}: pass it again, load(path, prior=fn).")
        prior = config.prior
    prior = resolve_prior(prior, **config.prior_options)
    nets = Networks(screen.n_genes, config.n_latent, config.n_hidden, config.n_layers, screen.n_batches,
                    zero_inflated=config.likelihood == "zinb")
    return nets, prior


def load(path, prior: Optional[Callable] = None, device=None, adata=None) -> SVAE:
    """Load a model written by :meth:`SVAE.save`. A custom prior function must be passed again."""
    from . import __version__
    from .train import resolve_device

    path = Path(path)
    config_file, params_file = path / "config.json", path / "params.pt"
    for f in (config_file, params_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing; expected a directory written by SVAE.save.")
    try:
        document = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON ({err}); the file is damaged.") from None
    if hashlib.sha256(params_file.read_bytes()).hexdigest() != document.get("params_sha256"):
        raise ValueError(f"{params_file} does not match the checksum in config.json: it was modified or truncated.")
    if _version_tuple(document.get("version", "0")) > _version_tuple(__version__):
        warnings.warn(f"The model was saved by pyro_svae {document['version']}, newer than this {__version__}.", stacklevel=2)
    tensors = torch.load(params_file, map_location="cpu", weights_only=True)
    config = SVAEConfig(**document["config"])
    screen = ScreenData(counts=np.zeros((1, len(document["gene_names"])), np.float32),
                        perturbations=np.zeros((1, 1), np.int64), batch=None, library=np.ones(1, np.float32),
                        gene_names=tuple(document["gene_names"]), perturbation_names=tuple(document["perturbation_names"]),
                        batch_names=None if document["batch_names"] is None else tuple(document["batch_names"]),
                        cell_names=("",))
    device = resolve_device(device)
    nets, prior_fn = build(config, screen, prior)
    nets.to(device)
    params: dict = {}
    with param_scope(params) as store:
        prior_sites = inspect_prior(prior_fn, screen.n_perturbations, config.n_latent)
        result = SVAE(config, nets, prior_fn, prior_sites, params, screen, TrainConfig(**document["train_config"]),
                      pd.DataFrame(document["history"]), device, adata)
        _create_params(result, screen.n_batches)
        expected = set(store.keys())
        if expected != set(tensors):
            raise ValueError(f"{params_file} holds parameters {sorted(set(tensors) ^ expected)[:5]} that do not fit this model.")
        with torch.no_grad():
            for name, value in store.get_state()["params"].items():
                if value.shape != tensors[name].shape:
                    raise ValueError(f"Parameter {name!r} has shape {tuple(tensors[name].shape)} in the file, "
                                     f"expected {tuple(value.shape)}.")
                value.copy_(tensors[name].to(device))
    return result


def _create_params(result: SVAE, n_batches: int) -> None:
    """Run model and guide once on a dummy cell so that every parameter exists in the store."""
    model_fn, guide_fn = result._functions()
    device = result.device
    dummy = {"library": torch.ones(1, device=device),
             "perturbations": torch.zeros(1, 1, dtype=torch.long, device=device),
             "batch": torch.zeros(1, dtype=torch.long, device=device) if n_batches else None,
             "counts": torch.zeros(1, len(result.gene_names), device=device)}
    local_elbo(model_fn, guide_fn, dummy)




def _version_tuple(version: str):
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("+")[0].split("."))
