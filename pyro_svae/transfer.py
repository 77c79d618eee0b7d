"""Transfer to unseen perturbations: new prior rows fitted on a few cells, everything else frozen.

The paper's out-of-distribution protocol: the encoder, decoder, dispersion and the parameters of
every known perturbation stay as trained; each new perturbation gets fresh rows in the prior's
``[P, K]`` guide parameters (its inclusion probabilities and shifts), fitted by the same SVI loop
on the cells given.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Optional, Union

import torch

from .data import _labels, _members
from .guide import inspect_prior
from .train import TrainConfig, param_scope, train

__all__ = ["transfer", "TRANSFER_STEPS"]

logger = logging.getLogger(__name__)

#: ``max_epochs="auto"`` in :func:`transfer` aims at about this many optimisation steps.
TRANSFER_STEPS = 2000


def _new_perturbations(svae, adata, key: str) -> list:
    labels = _labels(adata, key, "perturbation_key")
    members = {m for label in labels.unique() for m in _members(label, svae.config.control, svae.config.separator)}
    return sorted(members - set(svae.perturbation_names))


def transfer(svae, adata_new, perturbation_key: Optional[str] = None, max_epochs: Union[int, str] = "auto",
             batch_size: int = 256, lr: Optional[float] = None, seed: int = 0, progress: bool = False):
    """See :meth:`pyro_svae.SVAE.transfer`."""
    from .persistence import _create_params
    from .result import SVAE

    key = perturbation_key or svae.config.perturbation_key
    new = _new_perturbations(svae, adata_new, key)
    if not new:
        raise ValueError(f"adata_new.obs[{key!r}] holds no perturbation the model has not seen; "
                         f"known perturbations: {list(svae.perturbation_names)[:10]}... Use the model itself for those.")
    config = dataclasses.replace(svae.config, perturbation_key=key)
    names = tuple(svae.perturbation_names) + tuple(new)
    n_old, n_all, n_latent = len(svae.perturbation_names), len(names), svae.config.n_latent
    nets = copy.deepcopy(svae.nets)
    with param_scope({}):
        prior_sites = inspect_prior(svae.prior, n_all, n_latent)
    result = SVAE(config, nets, svae.prior, prior_sites, {}, _Names(svae, names), svae.train_config,
                  svae.history.copy(), svae.device, adata_new)
    screen = result._read(adata_new)
    with param_scope(result.params) as store:
        _create_params(result, len(svae.batch_names or ()))
        old = svae.params["params"]
        frozen = {}
        with torch.no_grad():
            for name, value in store.get_state()["params"].items():
                previous = old[name].to(value.device)
                if previous.shape == value.shape:
                    value.copy_(previous)
                    frozen[name] = True
                elif value.shape[-2:] == (n_all, n_latent) and previous.shape[-2:] == (n_old, n_latent):
                    value[..., :n_old, :] = previous  # known perturbations' rows; the new ones keep their init
                    mask = torch.zeros(value.shape, dtype=torch.bool)
                    mask[..., :n_old, :] = True
                    frozen[name] = mask
                else:
                    raise ValueError(f"Cannot transfer parameter {name!r}: shape {tuple(previous.shape)} in the model, "
                                     f"{tuple(value.shape)} with {len(new)} new perturbations.")
    trainable = [name for name, mask in frozen.items() if mask is not True]
    result.transfer_history = None
    if not trainable:  # a prior without per-perturbation parameters (e.g. "none"): nothing to fit
        logger.info("The prior has no per-perturbation parameters; %d perturbations added unfitted.", len(new))
        return result
    n_cells = screen.n_cells
    batch_size = min(batch_size, n_cells)
    steps_per_epoch = math.ceil(n_cells / batch_size)
    epochs = max(1, round(TRANSFER_STEPS / steps_per_epoch)) if max_epochs == "auto" else int(max_epochs)
    train_config = TrainConfig(batch_size=batch_size, max_epochs=epochs, kl_warmup_epochs=0, validation_fraction=0.0,
                               early_stopping=False, seed=seed,
                               prior_lr=svae.train_config.prior_lr if lr is None else lr)
    logger.info("Transferring to %d new perturbations on %d cells (%d epochs; parameters fitted: %s).",
                len(new), n_cells, epochs, trainable)
    result.transfer_history = train(screen, nets, svae.prior, prior_sites, likelihood=config.likelihood,
                                    config=train_config, params=result.params, device=svae.device,
                                    progress=progress, frozen=frozen)
    return result


class _Names:
    """The names an :class:`SVAE` takes from a screen, for a model with more perturbations."""

    def __init__(self, svae, perturbation_names):
        self.gene_names, self.batch_names = svae.gene_names, svae.batch_names
        self.perturbation_names = tuple(perturbation_names)

