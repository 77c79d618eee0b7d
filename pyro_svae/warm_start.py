"""Warm start: a dense fit whose latent space is rotated to make the perturbations' shifts sparse.

Under the model, ``z ~ Normal(delta[a], I)`` is isotropic, so rotating the latent space by an
orthogonal ``R`` (``z' = R^T z``, ``delta' = delta R``, the decoder reading ``R z'``) leaves the
likelihood unchanged: only the sparsity of ``delta`` tells the true axes apart. That makes the
sparse optimum hard to reach by gradient steps from a random start (a fit that forms its axes
rotated pays little for dense shifts and stays there), and easy to reach from a dense fit: the
rotation that makes ``delta`` sparsest (complete dictionary learning with an orthogonal
dictionary) aligns the axes, and the sparse prior then trains from there.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pandas as pd
import torch

from .factory import build
from .prior_refit import label_statistics
from .train import steps_per_epoch, train

__all__ = ["sparsest_rotation", "rotate_networks", "dense_rotated_start", "control_origin", "residual_rotation",
           "without_prior_params",
           "remaining", "join_histories", "was_rerotated", "has_settled", "checked_rotation", "rotation_closeness",
           "rotated_start",
           "REROTATE_BELOW", "SETTLED_STEPS", "WARM_START_PRIOR"]

#: A latent axis that the sparsest rotation of a fitted model's shifts moves by more than this
#: (|cos| of the angle to its nearest axis, 0.97 = 14 degrees) marks two or more mixed latents.
#: On the grid (``benchmarks/rerotation.py``, 42 screens) a second rotation raised the validation
#: ELBO of every settled fit under 0.98 and of few above 0.99; 0.95 left paper's fit (0.961) mixed.
REROTATE_BELOW = 0.97
#: A sparse stage that ran this many optimisation steps has settled, whether or not early stopping
#: ended it (``max_epochs="auto"`` gives the sparse stage about 19,600, 70% of ``train.TARGET_STEPS``):
#: a fit still mixed after that many steps stays mixed, while one of a few epochs may still be moving.
SETTLED_STEPS = 7000
#: The prior of the dense stage before the rotation (a name in ``priors.PRIORS`` and its options):
#: rotation-invariant Gaussian shifts, so the stage leaves the choice of axes to the rotation.
WARM_START_PRIOR = ("gaussian", {})


def sparsest_rotation(delta: np.ndarray, n_starts: int = 10, steps: int = 500, eps: float = 0.05,
                      seed: int = 0) -> np.ndarray:
    """The orthogonal ``R`` ``[K, K]`` that makes the rows of ``delta @ R`` sparsest.

    Minimises the smoothed l1 norm ``sum sqrt((delta R)^2 + eps^2)`` of the scaled shifts (the
    convex sparsity measure: on the simulator's grid it aligns the axes where l4-norm
    maximisation, Zhai et al. 2020, stops short once perturbations have two or three targets) over
    rotations ``R = R0 expm(A - A^T)``, by Adam from ``n_starts`` starts at once (the identity and
    random orthogonal matrices), and keeps the best.

    Parameters
    ----------
    delta : array ``[n_perturbations, n_latent]``
        Effective shifts of a dense fit.

    Returns
    -------
    numpy.ndarray ``[n_latent, n_latent]``, orthogonal.
    """
    d = torch.as_tensor(np.asarray(delta, dtype=np.float64))
    d = d / d.abs().max().clamp(min=1e-12)  # scale-free: eps is relative to the largest shift
    k = d.shape[1]
    generator = np.random.default_rng(seed)
    starts = [np.eye(k)] + [np.linalg.qr(generator.normal(size=(k, k)))[0] for _ in range(n_starts - 1)]
    r0 = torch.as_tensor(np.stack(starts))  # [S, K, K]
    a = torch.zeros_like(r0, requires_grad=True)
    optimizer = torch.optim.Adam([a], lr=0.05)

    def objective():
        rotation = r0 @ torch.linalg.matrix_exp(a - a.transpose(-1, -2))
        return torch.sqrt((d @ rotation) ** 2 + eps**2).sum((-1, -2)), rotation

    with torch.enable_grad():
        for _ in range(steps):
            values, _ = objective()
            optimizer.zero_grad()
            values.sum().backward()
            optimizer.step()
    with torch.no_grad():
        values, rotations = objective()
        best = rotations[int(values.argmin())].numpy()
    u, _, vt = np.linalg.svd(best)  # exactly orthogonal
    return u @ vt


def rotate_networks(nets, rotation: np.ndarray, translation=None) -> None:
    """Express ``nets`` in the latent space ``z' = R^T z - t`` (in place; ``t`` = ``translation``, default 0).

    The encoder's mean head returns ``R^T loc - t``; the decoder's first layer reads ``R (z' + t)``,
    so it decodes ``z'`` exactly as it decoded ``z``. The encoder's scale head is left as it is (a
    diagonal scale has no exact rotated counterpart; training re-fits it within a few steps).
    """
    with torch.no_grad():
        head = nets.encoder.loc
        r = torch.as_tensor(rotation, dtype=head.weight.dtype, device=head.weight.device)
        t = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device) if translation is None else \
            torch.as_tensor(translation, dtype=r.dtype, device=r.device)
        head.weight.copy_(r.T @ head.weight)
        head.bias.copy_(r.T @ head.bias - t)
        first = nets.decoder.body[0]
        k = rotation.shape[0]
        first.weight[:, :k] = first.weight[:, :k] @ r
        first.bias.add_(first.weight[:, :k] @ t)


def dense_rotated_start(components, screen, train_config, fraction: float, device, progress: bool = False):
    """Fit dense Gaussian shifts with ``components``' networks for ``fraction`` of the epochs, then
    rotate the networks so that the shifts are sparsest, and move the origin to the control cells'
    mean latent (on a screen without control cells, to each latent's median shift).

    The controls' prior is ``Normal(0, I)``, but a few percent of the cells pin that origin, and a
    dense fit of a few epochs may leave them several SDs off it along one direction (every shift
    then carries the same offset, which the sparsest rotation would align with an axis: a latent
    shifted by every perturbation). So the shifts are measured from the controls' mean latent.

    Returns ``(params, history, n_dense, typical_shift)``: the parameters to continue from (the
    networks' and the likelihood's, without the dense prior's), the dense fit's history, its epochs,
    and the median over perturbations of their largest shift in the new axes.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Expected warm_start_fraction in (0, 1), but got {fraction!r}.")
    n_dense = max(1, int(round(fraction * train_config.max_epochs)))
    prior, options = WARM_START_PRIOR
    dense = build(dataclasses.replace(components.config, prior=prior, prior_options=dict(options)), components.layout,
                  nets=components.nets)
    params: dict = {}
    history = train(screen, dense, config=dataclasses.replace(train_config, max_epochs=n_dense, early_stopping=False),
                    params=params, device=device, progress=progress)
    (shift,) = dense.sites
    delta = params["params"][shift.params["locs"]].detach().cpu().numpy()  # the guide's mean shifts [P, K]
    controls = np.flatnonzero(_is_control(screen.perturbations, screen.n_perturbations))
    if len(controls):
        _, n_cells, sums = label_statistics(components, screen, device, cells=controls,
                                            shifts=torch.as_tensor(delta, device=device))
        origin = (sums.sum(0) / n_cells.sum()).cpu().numpy().astype(delta.dtype)  # the controls' mean latent [K]
        rotation = sparsest_rotation(delta - origin, seed=train_config.seed)
        translation = origin @ rotation
    else:  # the origin is free, and the dense prior puts it at the mean shift: move it to each latent's
        # median shift, which is 0 when fewer than half the perturbations target a latent
        rotation = sparsest_rotation(delta, seed=train_config.seed)
        translation = np.median(delta @ rotation, 0)
    rotate_networks(components.nets, rotation, translation)
    aligned = delta @ rotation - translation
    typical_shift = float(np.median(np.abs(aligned).max(1)))
    return without_prior_params(params, dense), history, n_dense, typical_shift


def _is_control(codes, n_perturbations: int) -> np.ndarray:
    """Which cells ``[N]`` are controls: their perturbation codes ``[N, M]`` are all padding."""
    return (np.asarray(codes) == n_perturbations).all(1)


def control_origin(latent: np.ndarray, codes: np.ndarray, n_perturbations: int, min_cells: int = 5):
    """Where the shifts of a fitted model's cells are measured from: the mean ``[K]`` of ``latent``
    ``[N, K]`` over the control cells (``codes`` ``[N, M]`` all padding, ``n_perturbations``), or
    zeros (the prior's origin) with fewer than ``min_cells`` of them."""
    control = _is_control(codes, n_perturbations)
    return latent[control].mean(0) if control.sum() >= min_cells else np.zeros(latent.shape[1], latent.dtype)


def residual_rotation(latent: np.ndarray, codes: np.ndarray, n_perturbations: int, min_cells: int = 5,
                      min_shift: float = 0.5, seed: int = 0):
    """The sparsest rotation of a fitted model's empirical shifts, and how far it moves the axes.

    The shift of a perturbation is estimated by the mean posterior latent of its cells that carry
    it alone (``codes`` ``[N, M]`` padded with ``n_perturbations``; perturbations with fewer than
    ``min_cells`` such cells are left out), less the control cells' mean latent where the screen
    has them (:func:`control_origin`): under ``z ~ Normal(delta, I)`` it is ``delta``, whatever
    the prior. Only shifts that move some latent by ``min_shift`` prior SDs or more pin the axes
    (a perturbation without a phenotype has a mean latent of sampling noise, which any rotation
    fits as well): with fewer than twice as many of them as latents the sparsest rotation is not
    determined, and the identity is returned. Returns ``(R, closeness)`` with ``closeness`` the
    smallest over the new axes of ``max |R[:, j]|`` (1 when ``R`` is a signed permutation): a
    sparse fit stuck with two latents mixed has a sparser rotation (closeness well below 1); one at
    its optimum does not.
    """
    codes = np.asarray(codes)
    single = (codes != n_perturbations).sum(1) == 1
    label = np.where(single, codes.min(1), -1)
    rows = np.array([latent[label == p].mean(0) for p in range(n_perturbations)
                     if (label == p).sum() >= min_cells]).reshape(-1, latent.shape[1])  # [P', K]
    rows = rows - control_origin(latent, codes, n_perturbations, min_cells)
    if (np.abs(rows).max(1, initial=0.0) >= min_shift).sum() < 2 * latent.shape[1]:
        return np.eye(latent.shape[1]), 1.0
    rotation = sparsest_rotation(rows, seed=seed)
    return rotation, float(np.abs(rotation).max(0).min())


def without_prior_params(params: dict, components) -> dict:
    """``params`` (a param-store state) without the guide parameters of ``components``' prior sites."""
    names = {name for site in components.sites for name in site.params.values()}
    return {key: {name: value for name, value in params[key].items() if name not in names}
            for key in ("params", "constraints")}


def remaining(train_config, n_dense: int):
    """The training settings of the fit that continues from a warm start of ``n_dense`` epochs."""
    return dataclasses.replace(train_config, max_epochs=max(1, train_config.max_epochs - n_dense), kl_warmup_epochs=0)


def join_histories(histories):
    """One history of consecutive stages (each with a ``stage`` column; epochs already numbered through)."""
    frames = []
    for i, history in enumerate(histories):
        history = history.copy()
        if "stage" not in history:
            history["stage"] = "sparse"
        if i < len(histories) - 1 and "restored" in history:
            history["restored"] = False  # the model keeps the last stage's parameters
        frames.append(history)
    return pd.concat(frames, ignore_index=True)


def has_settled(n_epochs: int, train_config, n_train: int) -> bool:
    """Whether a sparse stage of ``n_epochs`` under ``train_config`` (on ``n_train`` training cells)
    has settled enough for :func:`residual_rotation` to judge it: early stopping ended it before
    ``max_epochs``, or it ran at least :data:`SETTLED_STEPS` optimisation steps."""
    steps = n_epochs * steps_per_epoch(n_train, train_config.batch_size)
    return n_epochs < train_config.max_epochs or steps >= SETTLED_STEPS


def checked_rotation(history, latent: np.ndarray, perturbations, n_perturbations: int, seed: int = 0):
    """:func:`residual_rotation` of a settled fit's cell latents ``[n_cells, K]`` (``perturbations``: each
    cell's label code ``[n_cells]``), its ``closeness`` written into the fit's ``history`` (column
    ``closeness``, on the stage's last epoch; read by :func:`rotation_closeness`), so that a fit near
    :data:`REROTATE_BELOW` can be told from one far from it. Returns ``(R [K, K], closeness)``."""
    rotation, closeness = residual_rotation(latent, perturbations, n_perturbations, seed=seed)
    history.loc[history.index[-1], "closeness"] = closeness
    return rotation, closeness


def rotated_start(components, params: dict, latent: np.ndarray, rotation: np.ndarray, perturbations,
                  n_perturbations: int) -> dict:
    """The start of the second sparse stage of a fit left mixed: its networks rotated by ``rotation``
    ``[K, K]`` (in place) with the origin at the control cells' mean of ``latent`` ``[n_cells, K]``
    (:func:`control_origin`), and ``params`` without the prior's guide parameters (returned)."""
    rotate_networks(components.nets, rotation, control_origin(latent, perturbations, n_perturbations) @ rotation)
    return without_prior_params(params, components)


def rotation_closeness(history) -> Optional[float]:
    """The closeness ``fit`` measured on its settled sparse stage (:func:`checked_rotation`), or ``None``
    when no check ran (a fit that did not settle, no warm start, or a rotation-invariant prior)."""
    values = history["closeness"].dropna() if "closeness" in history else ()
    return float(values.iloc[0]) if len(values) else None


def was_rerotated(history) -> bool:
    """Whether ``fit`` rotated a settled fit again (:func:`residual_rotation`): its history has a
    ``re-rotated`` stage, a second sparse stage after the rotation."""
    return bool("stage" in history and (history["stage"] == "re-rotated").any())
