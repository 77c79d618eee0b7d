"""Warm start: a dense fit whose latent space is rotated to make the perturbations' shifts sparse.

Under the model, ``z ~ Normal(delta[a], I)`` is isotropic, so rotating the latent space by an
orthogonal ``R`` (``z' = R^T z``, ``delta' = delta R``, the decoder reading ``R z'``) leaves the
likelihood unchanged: only the sparsity of ``delta`` tells the true axes apart. That makes the
sparse optimum hard to reach by gradient steps from a random start (a fit that forms its axes
rotated pays little for dense shifts and stays there), and easy to reach in closed form from a
dense fit: the rotation that makes ``delta`` sparsest (complete dictionary learning with an
orthogonal dictionary, by l4-norm maximisation; Zhai et al. 2020) aligns the axes, and the
sparse prior then trains from there.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch

from .factory import build
from .train import train

__all__ = ["sparsest_rotation", "rotate_networks", "dense_rotated_start", "remaining", "join_histories"]


def _l4_rotation(delta: np.ndarray, rotation: np.ndarray, iterations: int) -> np.ndarray:
    for _ in range(iterations):
        # matching, stretching, projection (Zhai et al. 2020): a fixed point of max ||delta R||_4^4
        u, _, vt = np.linalg.svd(delta.T @ (delta @ rotation) ** 3)
        rotation = u @ vt
    return rotation


def sparsest_rotation(delta: np.ndarray, n_starts: int = 10, iterations: int = 300, seed: int = 0) -> np.ndarray:
    """The orthogonal ``R`` ``[K, K]`` that makes the rows of ``delta @ R`` sparsest.

    Maximises ``sum |delta R|^4`` (for a fixed Frobenius norm, large when each row has few
    large entries) from ``n_starts`` random orthogonal starts, the identity among them, and keeps
    the best.

    Parameters
    ----------
    delta : array ``[n_perturbations, n_latent]``
        Effective shifts of a dense fit.

    Returns
    -------
    numpy.ndarray ``[n_latent, n_latent]``, orthogonal.
    """
    delta = np.asarray(delta, dtype=np.float64)
    delta = delta / max(np.abs(delta).max(), 1e-12)  # the l4 fixed point is scale-free; this keeps it finite
    k = delta.shape[1]
    rng = np.random.default_rng(seed)
    best, best_value = np.eye(k), -np.inf
    for start in range(n_starts):
        initial = np.eye(k) if start == 0 else np.linalg.qr(rng.normal(size=(k, k)))[0]
        rotation = _l4_rotation(delta, initial, iterations)
        value = float(((delta @ rotation) ** 4).sum())
        if value > best_value:
            best, best_value = rotation, value
    return best


def rotate_networks(nets, rotation: np.ndarray) -> None:
    """Express ``nets`` in the rotated latent space ``z' = R^T z`` (in place).

    The encoder's mean head returns ``R^T loc``; the decoder's first layer reads ``R z'``, so it
    decodes ``z'`` exactly as it decoded ``z``. The encoder's scale head is left as it is (a
    diagonal scale has no exact rotated counterpart; training re-fits it within a few steps).
    """
    with torch.no_grad():
        head = nets.encoder.loc
        r = torch.as_tensor(rotation, dtype=head.weight.dtype, device=head.weight.device)
        head.weight.copy_(r.T @ head.weight)
        head.bias.copy_(r.T @ head.bias)
        first = nets.decoder.body[0]
        k = rotation.shape[0]
        first.weight[:, :k] = first.weight[:, :k] @ r


def dense_rotated_start(components, screen, train_config, fraction: float, device, progress: bool = False):
    """Fit dense Gaussian shifts with ``components``' networks for ``fraction`` of the epochs, then
    rotate the networks so that the shifts are sparsest.

    Returns ``(params, history, n_dense)``: the parameters to continue from (the networks' and the
    likelihood's, without the dense prior's), the dense fit's history and its epochs.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"Expected warm_start_fraction in (0, 1), but got {fraction!r}.")
    n_dense = max(1, int(round(fraction * train_config.max_epochs)))
    dense = build(dataclasses.replace(components.config, prior="gaussian", prior_options={}), components.layout,
                  nets=components.nets)
    params: dict = {}
    history = train(screen, dense, config=dataclasses.replace(train_config, max_epochs=n_dense, early_stopping=False),
                    params=params, device=device, progress=progress)
    (shift,) = dense.sites
    delta = params["params"][shift.params["locs"]].detach().cpu().numpy()  # the guide's mean shifts [P, K]
    rotate_networks(components.nets, sparsest_rotation(delta, seed=train_config.seed))
    dense_names = set(shift.params.values())
    kept = {key: {name: value for name, value in params[key].items() if name not in dense_names}
            for key in ("params", "constraints")}
    return kept, history, n_dense


def remaining(train_config, n_dense: int):
    """The training settings of the fit that continues from a warm start of ``n_dense`` epochs."""
    return dataclasses.replace(train_config, max_epochs=max(1, train_config.max_epochs - n_dense), kl_warmup_epochs=0)


def join_histories(histories):
    """One history of consecutive stages (each with a ``stage`` column), epochs numbered through."""
    frames, offset = [], 0
    for i, history in enumerate(histories):
        history = history.copy()
        if "stage" not in history:
            history["stage"] = "sparse"
        if i < len(histories) - 1 and "restored" in history:
            history["restored"] = False  # the model keeps the last stage's parameters
        history["epoch"] = history["epoch"] + offset
        offset += len(history)
        frames.append(history)
    return pd.concat(frames, ignore_index=True)
