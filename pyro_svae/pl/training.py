"""Training plots: the ELBO per epoch with the epoch the model keeps, and the inclusion
probabilities over training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import axes_or_new

__all__ = ["training", "target_trace"]


def training(model_or_history, ax=None):
    """Train and validation ELBO per epoch (from ``SVAE.history`` or the model itself).

    Marks the end of the KL warm-up (shaded), the switch from a dense warm start to the sparse
    fit (``stage`` column), and the epoch whose parameters the model keeps (``restored`` column,
    e.g. early stopping's best epoch). Returns the ``Axes``.
    """
    history = getattr(model_or_history, "history", model_or_history)
    ax = axes_or_new(ax)
    ax.plot(history["epoch"], history["train_elbo"], label="train")
    if history["validation_elbo"].notna().any():
        ax.plot(history["epoch"], history["validation_elbo"], label="validation")
    values = history[["train_elbo", "validation_elbo"]].to_numpy(float)
    finite = values[np.isfinite(values)]
    if finite.size:  # the first epochs sit far below: show the converged range
        low, high = np.quantile(finite, [0.05, 1.0])
        ax.set_ylim(low - 0.1 * (high - low), high + 0.05 * (high - low))
    if "kl_weight" in history and (history["kl_weight"] < 1).any():
        end = history.loc[history["kl_weight"] < 1, "epoch"].max()
        ax.axvspan(history["epoch"].min(), end + 0.5, color="0.9", zorder=0, label="KL warm-up")
    if "stage" in history and history["stage"].nunique() > 1:
        switch = history.loc[history["stage"] != history["stage"].iloc[0], "epoch"].min()
        ax.axvline(switch - 0.5, color="0.4", ls=":", lw=1, label=f"{history['stage'].iloc[0]} warm start ends")
    if "restored" in history and history["restored"].any():
        epoch = history.loc[history["restored"].astype(bool), "epoch"].iloc[-1]
        ax.axvline(epoch, color="C3", ls="--", lw=1, label=f"kept: epoch {epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per cell")
    ax.legend(fontsize=8)
    return ax


def target_trace(model_or_trace, perturbations=None, threshold: float = 0.5, ax=None):
    """Inclusion probabilities over training (``fit(..., track_targets=True)``): one line per
    (perturbation, latent) pair whose probability ever exceeds ``threshold``.

    Accepts a fitted model (its ``target_trace``) or that long table (``epoch``, ``perturbation``,
    ``latent``, ``pip``). Settled targets are flat lines at 0 or 1 before the end. Returns the ``Axes``.
    """
    trace = getattr(model_or_trace, "target_trace", model_or_trace)
    if not isinstance(trace, pd.DataFrame):
        raise ValueError("No inclusion probabilities were tracked: fit with track_targets=True.")
    if perturbations is not None:
        trace = trace[trace["perturbation"].isin([perturbations] if isinstance(perturbations, str) else perturbations)]
    ever = trace.groupby(["perturbation", "latent"])["pip"].max()
    pairs = ever[ever > threshold].index
    ax = axes_or_new(ax, figsize=(6, 3.5))
    for perturbation, latent in pairs:
        rows = trace[(trace["perturbation"] == perturbation) & (trace["latent"] == latent)]
        ax.plot(rows["epoch"], rows["pip"], lw=0.8, alpha=0.7,
                label=f"{perturbation}: {latent}" if len(pairs) <= 12 else None)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("inclusion probability")
    ax.set_title(f"{len(pairs)} (perturbation, latent) pairs above {threshold} at some epoch", fontsize=10)
    if 0 < len(pairs) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return ax
