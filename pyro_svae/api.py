"""``fit`` and ``load``: AnnData or a saved model in, a :class:`~pyro_svae.svae.SVAE` out; thin
facades over the stages (read, build, train, wrap)."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from dataclasses import asdict
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd
import pyro

from . import warm_start as warm
from .checkpoint import check_resumable, load_checkpoint
from .data import read_screen
from .factory import SVAEConfig, build, layout_of, with_resolved_min_shift
from .likelihoods import get_likelihood
from .persistence import read, restore
from .posterior import draw_globals
from .prior_refit import refit_prior
from .priors import prior_name
from .restarts import best_of
from .results import inclusion_table, latent_activity
from .svae import SVAE
from .runtime import resolve_device
from .train import TrainConfig, TrainingDiverged, auto_max_epochs, split_cells, train

__all__ = ["fit", "load", "model_config"]

logger = logging.getLogger(__name__)


def _check(name: str, value, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"Expected {name} {expected}, but got {value!r}.")


def model_config(perturbation_key: str = "perturbation", control: Optional[str] = "control", *,
                 layer: Optional[str] = None, batch_key: Optional[str] = None, n_latent: int = 10,
                 prior: Union[str, Callable] = "spike_and_slab", prior_options: Optional[dict] = None,
                 likelihood: str = "nb", n_hidden: int = 128, n_layers: int = 2, encoder: str = "counts",
                 separator: Optional[str] = "+", allow_non_integer: bool = False):
    """The :class:`SVAEConfig` of ``fit``'s model options, and the prior (name or function) to build."""
    _check("n_latent", n_latent, isinstance(n_latent, int) and n_latent >= 1, "to be an integer >= 1")
    get_likelihood(likelihood)
    prior_options = dict(prior_options or {})
    if isinstance(prior, functools.partial) and not prior.args:  # a built-in with options bound
        prior_options = {**prior.keywords, **prior_options}
        prior = prior.func
    config = SVAEConfig(
        n_latent=n_latent, prior=prior if isinstance(prior, str) else prior_name(prior),
        prior_options=prior_options, likelihood=likelihood, n_hidden=n_hidden, n_layers=n_layers, encoder=encoder,
        perturbation_key=perturbation_key, control=control, layer=layer, batch_key=batch_key,
        separator=separator, allow_non_integer=allow_non_integer,
    )
    return config, prior


#: Priors whose shifts keep their law under a rotation of the latent space: nothing to re-rotate.
ROTATION_INVARIANT = ("gaussian", "none")

def fit(
    adata,
    perturbation_key: str = "perturbation",
    control: Optional[str] = "control",
    *,
    layer: Optional[str] = None,
    batch_key: Optional[str] = None,
    n_latent: int = 10,
    prior: Union[str, Callable] = "spike_and_slab",
    prior_options: Optional[dict] = None,
    likelihood: str = "nb",
    n_hidden: int = 128,
    n_layers: int = 2,
    encoder: str = "counts",
    batch_size: int = 256,
    max_epochs: Union[int, str] = "auto",
    lr: float = 1e-3,
    prior_lr: float = 1e-2,
    lr_decay: float = 1.0,
    weight_decay: float = 0.0,
    kl_warmup_epochs: Union[int, str] = "auto",
    validation_fraction: float = 0.1,
    early_stopping: bool = True,
    patience: Union[int, str] = "auto",
    separator: Optional[str] = "+",
    allow_non_integer: bool = False,
    warm_start: Optional[str] = "rotate",
    warm_start_fraction: float = 0.3,
    track_targets: bool = False,
    objective: str = "fused",
    seed: int = 0,
    device=None,
    progress: bool = True,
    checkpoint_every: Optional[int] = None,
    checkpoint_dir=None,
    resume_from=None,
    n_restarts: int = 1,
) -> SVAE:
    """Fit a sparse mechanism shift VAE to a perturbation screen.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells x genes raw counts (dense or sparse) in ``X`` or ``layers[layer]``; not modified.
    perturbation_key : str
        Column of ``adata.obs`` naming each cell's perturbation; ``control`` marks controls and
        ``separator`` joins combinations (``"A+B"``: the shifts of A and B add up). ``control=None``
        for a screen without control cells.
    batch_key : str, optional
        Column of ``adata.obs`` with a batch (e.g. replicate) given to encoder and decoder.
    n_latent : int
        Number of latent dimensions ``K``.
    prior : str or callable
        A name in :data:`pyro_svae.priors.PRIORS` or a function ``prior(n_perturbations, n_latent)``
        returning the effective shifts ``[P, K]``; its guide is built automatically.
    prior_options : dict, optional
        Keyword options of the prior, e.g. ``{"min_shift": 1.0}`` for ``spike_and_slab``.
    likelihood : {"nb", "zinb", "poisson"}
    encoder : {"counts", "conjugate", "full"}
        ``q(z | x)`` mean-field; a factor of the counts times the cell's prior; or with a full covariance (:mod:`~pyro_svae.nets`).
    max_epochs, kl_warmup_epochs : int or "auto"
        ``"auto"``: about 28,000 optimisation steps (50 to 2,000 epochs), warm-up over the first fortieth of them.
    lr, prior_lr, lr_decay, weight_decay : float
        Learning rates of the networks and of the prior's guide parameters; both end each stage at ``lr_decay``
        times their value (exponential decay over the planned steps; ``1``: constant). The decay follows
        ``max_epochs``: a resume with a larger ``max_epochs`` continues on the longer schedule. ``weight_decay``
        (default 0): ``ClippedAdam``'s L2 penalty on the networks' weight matrices (not biases, LayerNorm gains,
        dispersion or prior), added to the clipped gradient of the training cells' ELBO: ``Normal(0, w**-0.5)``.
    validation_fraction : float
        Cells held out for the validation ELBO and early stopping; ``0`` trains on all cells.
    early_stopping, patience :
        Stop when the validation ELBO (mean of the last 10 epochs) has not improved for ``patience`` epochs
        after the warm-up, and restore the best parameters. ``"auto"``: a quarter of ``max_epochs``, at least 30.
    warm_start : {"rotate", None}
        ``"rotate"`` (default): spend ``warm_start_fraction`` of the epochs fitting dense Gaussian shifts, rotate
        the latent space to make them sparsest and move its origin to the control cells' mean latent (without
        controls, to the median shift), then fit ``prior`` from there (:mod:`pyro_svae.warm_start`). The likelihood
        does not tell rotated latent axes apart, only the sparsity of the shifts does: from a random start a fit
        keeps its axes rotated (on the simulator's grid, latent MCC 0.6-0.9 instead of 0.95). Once the fit settled
        (early stopping, or 7,000 sparse steps: :func:`pyro_svae.warm_start.has_settled`), if the cells' mean
        latents per perturbation are sparser in axes rotated more than 14 degrees (latents left mixed,
        :func:`pyro_svae.warm_start.residual_rotation`; needs ``2 * n_latent`` perturbations moving a latent by 0.5
        SD), it is rotated again and the prior refitted (``stage`` ``"re-rotated"``; a second fit's time). ``None``:
        fit ``prior`` from the start.
    track_targets : bool
        Record the inclusion probabilities after every epoch (``model.target_trace``, plotted by
        :func:`pyro_svae.pl.target_trace`): do the targets settle before training ends?
    objective : {"fused", "pyro"}
        ``"fused"``: ``TraceMeanField_ELBO``'s estimator in one pass (:mod:`pyro_svae.objective`, tested equal to
        Pyro's on the same draws, faster); ``"pyro"``: Pyro's ``SVI`` on :func:`pyro_svae.model` and ``guide``.
    seed : int
        Seeds the split, the initialisation and every draw: the same seed gives the same model.
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    checkpoint_every, checkpoint_dir :
        Write the whole state of the fit to ``checkpoint_dir`` every ``checkpoint_every`` epochs.
    resume_from : path, optional
        A checkpoint directory: continue that fit exactly (same data and settings; ``max_epochs`` may be larger).
    n_restarts : int
        Fit from seeds ``seed`` to ``seed + n_restarts - 1`` and keep the fit with the highest ELBO on all
        cells (:mod:`pyro_svae.restarts`; ``model.restarts`` lists them): ``n_restarts`` times the time.

    Returns
    -------
    SVAE
        The fitted model; ``model.history`` has the per-epoch ELBOs. Its last step fits the prior's
        guide to convergence with the networks fixed (:mod:`pyro_svae.prior_refit`).
    """
    if n_restarts != 1:  # each restart is this function with n_restarts=1 and its own seed
        return best_of(fit, {k: v for k, v in locals().items() if k != "n_restarts"}, n_restarts)
    _check("n_latent", n_latent, isinstance(n_latent, int) and n_latent >= 1, "to be an integer >= 1")
    get_likelihood(likelihood)
    _check("batch_size", batch_size, isinstance(batch_size, int) and batch_size >= 1, "to be an integer >= 1")
    _check("validation_fraction", validation_fraction, 0 <= validation_fraction < 1, "in [0, 1)")
    _check("lr", lr, lr > 0, "> 0")
    _check("lr_decay", lr_decay, 0 < lr_decay <= 1, "in (0, 1]")
    _check("weight_decay", weight_decay, bool(np.isfinite(weight_decay)) and weight_decay >= 0, "to be finite and >= 0")
    _check("warm_start", warm_start, warm_start in (None, "rotate"), "to be None or 'rotate'")
    if checkpoint_every is not None:
        _check("checkpoint_every", checkpoint_every, isinstance(checkpoint_every, int) and checkpoint_every >= 1,
               "to be None or an integer >= 1")
        if checkpoint_dir is None:
            raise ValueError("checkpoint_every is set but checkpoint_dir is None; expected a directory to write to.")
    screen = read_screen(adata, perturbation_key, control, layer=layer, batch_key=batch_key,
                         separator=separator, allow_non_integer=allow_non_integer)
    train_cells, _ = split_cells(screen.n_cells, validation_fraction, np.random.default_rng(seed))
    if batch_size > len(train_cells):  # as scvi-tools does: a smaller screen trains in one batch
        warnings.warn(f"batch_size={batch_size} is larger than the {len(train_cells)} training cells; using "
                      f"batch_size={len(train_cells)}.", UserWarning, stacklevel=2)
        batch_size = len(train_cells)
    if max_epochs == "auto":
        max_epochs = auto_max_epochs(len(train_cells), batch_size)
    if kl_warmup_epochs == "auto":  # short: the sparsity of the targets must act while the latent axes form
        kl_warmup_epochs = max(1, max_epochs // 40)
    patience = max(30, max_epochs // 4) if patience == "auto" else patience
    _check("max_epochs", max_epochs, isinstance(max_epochs, int) and max_epochs >= 1, "to be 'auto' or an integer >= 1")
    config, prior = model_config(
        perturbation_key, control, layer=layer, batch_key=batch_key, n_latent=n_latent, prior=prior,
        prior_options=prior_options, likelihood=likelihood, n_hidden=n_hidden, n_layers=n_layers, encoder=encoder,
        separator=separator, allow_non_integer=allow_non_integer)
    train_config = TrainConfig(
        batch_size=batch_size, max_epochs=max_epochs, lr=lr, prior_lr=prior_lr, lr_decay=lr_decay,
        weight_decay=weight_decay, kl_warmup_epochs=kl_warmup_epochs, validation_fraction=validation_fraction,
        early_stopping=early_stopping and validation_fraction > 0, patience=patience, seed=seed, objective=objective,
    )
    device = resolve_device(device)
    pyro.set_rng_seed(seed)
    layout = layout_of(screen, train_cells)
    components = build(config, layout, prior)
    logger.info("Fitting %d cells x %d genes, %d perturbations, prior %s, %d epochs on %s.",
                screen.n_cells, screen.n_genes, screen.n_perturbations, config.prior, max_epochs, device)
    settings = json.loads(json.dumps({**asdict(config), **asdict(train_config), "genes": screen.gene_names,
                                      "perturbations": screen.perturbation_names, "batches": screen.batch_names,
                                      "n_cells": screen.n_cells, "warm_start": warm_start,
                                      "warm_start_fraction": warm_start_fraction}, default=str))
    resume = None if resume_from is None else load_checkpoint(resume_from)
    if resume is not None:
        check_resumable(resume[0]["settings"], settings)
    params, stages = {}, []
    typical_shift, n_dense, extra = None, 0, {}
    if warm_start == "rotate" and resume is None:
        params, dense_history, n_dense, typical_shift = warm.dense_rotated_start(
            components, screen, train_config, warm_start_fraction, device, progress)
        stages.append(dense_history.assign(stage="dense"))
        extra = {"dense_epochs": n_dense, "typical_shift": typical_shift,
                 "dense_history": json.loads(dense_history.to_json(orient="records"))}
    elif resume is not None and resume[0]["progress"].get("extra", {}).get("dense_epochs"):
        extra = resume[0]["progress"]["extra"]  # the warm start the checkpointed fit began with
        n_dense, typical_shift = extra["dense_epochs"], extra["typical_shift"]
        stages.append(pd.DataFrame(extra["dense_history"]).assign(stage="dense"))
    if n_dense:
        train_config = warm.remaining(train_config, n_dense)
    resolved = with_resolved_min_shift(config, prior, typical_shift)
    if resolved != config:  # min_shift="auto" of the prior, now a number from the screen's shifts
        logger.info("min_shift='auto' resolved to %.2f (the screen's typical shift: %s).",
                    resolved.prior_options["min_shift"], "unknown" if typical_shift is None else f"{typical_shift:.2f}")
        config, components = resolved, build(resolved, layout, prior, nets=components.nets)
    trace: list = []

    def track(epoch: int) -> None:
        trace.append(inclusion_table(draw_globals(components, 10, device), layout, n_latent).stack().rename("pip")
                     .reset_index().assign(epoch=epoch))

    try:
        history = train(screen, components, config=train_config, params=params, device=device, progress=progress,
                        checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir, resume=resume,
                        settings=settings, on_epoch_end=track if track_targets else None, epoch_offset=n_dense,
                        checkpoint_extra=extra)
    except TrainingDiverged as error:
        if error.restored:
            error.model = SVAE(components, params, history=error.history, train_config=train_config, device=device,
                               adata=adata)
        raise
    model = SVAE(components, params, history=history, train_config=train_config, device=device, adata=adata)
    latent = None  # the cells' posterior means, computed once for the checks below (of settled fits only)
    if warm_start == "rotate" and config.prior not in ROTATION_INVARIANT and \
            warm.has_settled(len(history), train_config, len(train_cells)):
        latent = model.get_latent(adata)
        rotation, closeness = warm.checked_rotation(history, latent, screen.perturbations, screen.n_perturbations, seed)
        if closeness < warm.REROTATE_BELOW:
            logger.info("The fitted shifts are sparser in axes rotated up to %.0f degrees from the model's (latents "
                        "mixed): rotating (origin at the controls) and fitting the prior again.",
                        np.degrees(np.arccos(closeness)))
            stages.append(history)
            params = warm.rotated_start(components, params, latent, rotation, screen.perturbations,
                                        screen.n_perturbations)
            history = train(screen, components, config=train_config, params=params, device=device,
                            progress=progress, on_epoch_end=track if track_targets else None,
                            epoch_offset=n_dense + len(history)).assign(stage="re-rotated")
            model = SVAE(components, params, history=history, train_config=train_config, device=device, adata=adata)
            latent = None
    # the prior's guide to convergence with the networks fixed (early stopping cannot see its KLs)
    refit_prior(components, params, screen, device, train_cells, seed=seed)
    if stages:
        model.history = warm.join_histories(stages + [model.history])
    activity = latent_activity(model, latent=latent)
    if not activity["active"].all():
        logger.info("%d of %d latents are inactive (no target, no variance): %s. A smaller n_latent describes this "
                    "screen as well (pyro_svae.selection.select_model compares settings).",
                    (~activity["active"]).sum(), n_latent, list(activity.index[~activity["active"]]))
    if track_targets:
        model.target_trace = pd.concat(trace, ignore_index=True)[["epoch", "perturbation", "latent", "pip"]]
    return model


def load(path, prior: Optional[Callable] = None, device=None, adata=None) -> SVAE:
    """Load a model written by :meth:`SVAE.save` (a custom prior function must be passed again); ``adata``
    becomes the model's default data and must have the model's genes."""
    document, tensors = read(path)
    components, params = restore(document, tensors, prior, device := resolve_device(device))
    model = SVAE(components, params, history=pd.DataFrame(document["history"]), restarts=document.get("restarts"),
                 train_config=TrainConfig(**document["train_config"]), device=device, adata=adata)
    if adata is not None:
        model._read(adata)  # the genes and labels are checked now, not at first use
    return model
