"""Transfer to unseen perturbations: new prior rows fitted on a few cells, everything else frozen.

The paper's out-of-distribution protocol: the encoder, decoder, dispersion and the parameters of
every known perturbation stay as trained; each new perturbation gets fresh entries in the guide
parameters of every per-perturbation site of the prior (a site in the ``perturbations`` plate:
its inclusion probabilities and shifts, whatever their shape), fitted by the same SVI loop on the
cells given.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Optional, Union

import numpy as np
import pyro
import torch

from .data import _labels, _members, read_screen
from .factory import Components, Layout, build, create_params
from .runtime import param_scope
from .train import TrainConfig, steps_per_epoch, train

__all__ = ["transfer", "TRANSFER_STEPS"]

logger = logging.getLogger(__name__)

#: ``max_epochs="auto"`` in :func:`transfer` aims at about this many optimisation steps.
TRANSFER_STEPS = 2000


def _new_perturbations(components: Components, adata, key: str) -> list:
    config = components.config
    labels = _labels(adata, key, "perturbation_key")
    members = {m for label in labels.unique() for m in _members(label, config.control, config.separator)}
    return sorted(members - set(components.layout.perturbations))


def _extend(old: torch.Tensor, new: torch.Tensor, axis: Optional[int], n_old: int, name: str):
    """Copy ``old`` into ``new`` (the known perturbations' entries along ``axis``); the frozen mask."""
    if old.shape == new.shape:
        new.copy_(old)
        return True
    expected = list(new.shape)
    if axis is not None:
        expected[axis] = n_old
    if axis is None or list(old.shape) != expected:
        raise ValueError(f"Cannot transfer parameter {name!r}: shape {tuple(old.shape)} in the model, "
                         f"{tuple(new.shape)} with the new perturbations, and it is not the parameter of a site in "
                         "the 'perturbations' plate. A prior's own pyro.param may not depend on the number of "
                         "perturbations: make it a sample site in that plate.")
    index = [slice(None)] * new.dim()
    index[axis] = slice(0, n_old)
    new[tuple(index)] = old
    mask = torch.zeros(new.shape, dtype=torch.bool)
    mask[tuple(index)] = True
    return mask


def transfer(components: Components, params: dict, adata_new, train_config: TrainConfig, device,
             perturbation_key: Optional[str] = None, max_epochs: Union[int, str] = "auto", batch_size: int = 256,
             lr: Optional[float] = None, seed: int = 0, progress: bool = False):
    """See :meth:`pyro_svae.SVAE.transfer`. Returns ``(components, params, history)`` of the new model
    (``history`` is ``None`` when the prior has no per-perturbation parameters to fit)."""
    config = components.config
    key = perturbation_key or config.perturbation_key
    new = _new_perturbations(components, adata_new, key)
    if not new:
        raise ValueError(f"adata_new.obs[{key!r}] holds no perturbation the model has not seen; "
                         f"known perturbations: {list(components.layout.perturbations)[:10]}... Use the model itself "
                         "for those.")
    config = dataclasses.replace(config, perturbation_key=key)
    old_layout = components.layout
    names = tuple(old_layout.perturbations) + tuple(new)
    screen = read_screen(adata_new, key, config.control, layer=config.layer, batch_key=config.batch_key,
                         separator=config.separator, allow_non_integer=config.allow_non_integer,
                         gene_names=old_layout.genes, perturbation_names=names, batch_names=old_layout.batches,
                         require_control=False)
    counts = np.bincount(screen.perturbations.reshape(-1), minlength=len(names) + 1)[:len(names)]
    layout = Layout(old_layout.genes, names, old_layout.batches,
                    tuple(old_layout.cells_per_perturbation) + tuple(int(c) for c in counts[len(old_layout.perturbations):]))
    pyro.set_rng_seed(seed)  # the new entries' initial values and every draw of the fit
    result = build(config, layout, components.source, nets=copy.deepcopy(components.nets))
    n_old = len(old_layout.perturbations)
    axes = {name: site.perturbation_axis for site in result.sites for name in site.params.values()}
    new_params: dict = {}
    frozen = {}
    with param_scope(new_params) as store, torch.no_grad():
        create_params(result, device)
        for name, value in store.get_state()["params"].items():
            frozen[name] = _extend(params["params"][name].to(value.device), value, axes.get(name), n_old, name)
    trainable = [name for name, mask in frozen.items() if mask is not True]
    if not trainable:  # a prior without per-perturbation parameters (e.g. "none"): nothing to fit
        logger.info("The prior has no per-perturbation parameters; %d perturbations added unfitted.", len(new))
        return result, new_params, None
    n_cells = screen.n_cells
    batch_size = min(batch_size, n_cells)
    epochs = max(1, round(TRANSFER_STEPS / steps_per_epoch(n_cells, batch_size))) if max_epochs == "auto" \
        else int(max_epochs)
    config_new = TrainConfig(batch_size=batch_size, max_epochs=epochs, kl_warmup_epochs=0, validation_fraction=0.0,
                             early_stopping=False, seed=seed, prior_lr=train_config.prior_lr if lr is None else lr)
    logger.info("Transferring to %d new perturbations on %d cells (%d epochs; parameters fitted: %s).",
                len(new), n_cells, epochs, trainable)
    history = train(screen, result, config=config_new, params=new_params, device=device, progress=progress,
                    frozen=frozen)
    return result, new_params, history
