"""Persistence: a fitted model as ``config.json`` (configuration, layout, history) and ``params.pt``
(tensors only), and reading it back into parameters that fit a freshly built model.

Format 2 (pyro_svae 0.2) names guide parameters ``PriorGuide.<role>.<site>``; files of format 1
(0.1) are read with their parameter names mapped, their ``spike_and_slab`` read as
:func:`~pyro_svae.priors.beta_spike_and_slab` (the 0.1 prior).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from .factory import Components, Layout, SVAEConfig, build, create_params
from .runtime import param_scope
from .train import TrainConfig

__all__ = ["FORMAT", "save", "read", "restore"]

#: Version of the file layout written by :func:`save`.
FORMAT = 2
#: 0.1 parameter suffixes -> role in the PriorGuide namespace
_FORMAT1_ROLES = {"logits": "logits", "map": "values", "loc": "locs", "scale": "scales"}


def save(path, components: Components, params: dict, train_config: TrainConfig, history: pd.DataFrame,
         overwrite: bool = False, restarts: Optional[pd.DataFrame] = None) -> None:
    """Write a model to directory ``path`` (see :meth:`pyro_svae.SVAE.save`), with the table of its
    restarts when it has one."""
    from . import __version__

    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty; pass overwrite=True to replace it.")
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: value.detach().cpu().contiguous() for name, value in params["params"].items()}
    torch.save(tensors, path / "params.pt")
    digest = hashlib.sha256((path / "params.pt").read_bytes()).hexdigest()
    layout = components.layout
    document = {
        "format": FORMAT, "version": __version__, "config": asdict(components.config),
        "train_config": asdict(train_config), "gene_names": list(layout.genes),
        "perturbation_names": list(layout.perturbations),
        "batch_names": None if layout.batches is None else list(layout.batches),
        "cells_per_perturbation": list(layout.cells_per_perturbation),
        "history": history.to_dict(orient="list"), "params_sha256": digest,
        "restarts": None if restarts is None else restarts.to_dict(orient="list"),
    }
    (path / "config.json").write_text(json.dumps(document, indent=1, default=str))


def _version_tuple(version: str):
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("+")[0].split("."))


def _from_format1(document: dict, tensors: dict):
    """A 0.1 document and tensors in the names of format 2."""
    config = dict(document["config"])
    if config["prior"] == "spike_and_slab":
        config["prior"] = "beta_spike_and_slab"
    elif config["prior"] == "relaxed_bernoulli":
        raise ValueError("This model was saved by pyro_svae 0.1 with prior='relaxed_bernoulli', whose form has "
                         "changed (its sparsity now scales with the cells): fit it again.")
    mapped = {}
    for name, value in tensors.items():
        site, _, suffix = name.rpartition("_")
        if not name.startswith(("encoder$$$", "decoder$$$")) and name != "dispersion" and suffix in _FORMAT1_ROLES:
            name = f"PriorGuide.{_FORMAT1_ROLES[suffix]}.{site}"
        mapped[name] = value
    document = {**document, "config": config, "cells_per_perturbation": [0] * len(document["perturbation_names"])}
    return document, mapped


def read(path):
    """The document and tensors of a saved model, checked and in the current format."""
    from . import __version__

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
        warnings.warn(f"The model was saved by pyro_svae {document['version']}, newer than this {__version__}.", stacklevel=3)
    tensors = torch.load(params_file, map_location="cpu", weights_only=True)
    if document.get("format", 1) == 1:
        document, tensors = _from_format1(document, tensors)
    return document, tensors


def restore(document: dict, tensors: dict, prior=None, device="cpu"):
    """Build the model of ``document`` and fill its parameters: ``(components, params)``."""
    config = SVAEConfig(**document["config"])
    layout = Layout(tuple(document["gene_names"]), tuple(document["perturbation_names"]),
                    None if document["batch_names"] is None else tuple(document["batch_names"]),
                    tuple(document["cells_per_perturbation"]))
    components = build(config, layout, prior)
    components.nets.to(device)
    params: dict = {}
    with param_scope(params) as store, torch.no_grad():
        create_params(components, device)
        expected = set(store.keys())
        if expected != set(tensors):
            raise ValueError(f"The file holds parameters {sorted(set(tensors) ^ expected)[:5]} that do not fit this "
                             "model (another prior or prior options?).")
        for name, value in store.get_state()["params"].items():
            if value.shape != tensors[name].shape:
                raise ValueError(f"Parameter {name!r} has shape {tuple(tensors[name].shape)} in the file, "
                                 f"expected {tuple(value.shape)}.")
            value.copy_(tensors[name].to(device))
    return components, params
