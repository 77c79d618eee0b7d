"""The plates a prior's sites sit in: ``perturbations`` (dim -2) and ``latents`` (dim -1).

Within one call of a prior (inside :func:`prior_scope`, as the model and guide call it), each
plate is one object, made on first use: :func:`plates`, :func:`perturbations_plate` and
:func:`latents_plate` can be entered as often as a prior likes (a Pyro plate is a sample site, so
two plates of one name in one trace are an error).
"""

from __future__ import annotations

import contextlib

import pyro
import torch

__all__ = ["PERTURBATIONS_DIM", "LATENTS_DIM", "prior_scope", "perturbations_plate", "latents_plate", "plates"]

PERTURBATIONS_DIM = -2
LATENTS_DIM = -1

_SCOPES: list = []  # the plates of the prior calls in progress, innermost last


@contextlib.contextmanager
def prior_scope(device=None):
    """Inside, :func:`plates`, :func:`perturbations_plate` and :func:`latents_plate` hand out one
    plate object per name, created on first use: a prior can enter a plate several times.

    The model and guide call the prior inside one; a prior called on its own gets fresh plates.
    On a ``device`` other than the CPU, tensors the prior creates (``torch.zeros``,
    ``torch.as_tensor``...) are created there.
    """
    _SCOPES.append({})
    on_device = torch.device(device) if device is not None and torch.device(device).type != "cpu" else contextlib.nullcontext()
    try:
        with on_device:
            yield
    finally:
        _SCOPES.pop()


def _plate(name: str, size: int, dim: int) -> pyro.plate:
    if not _SCOPES:
        return pyro.plate(name, size, dim=dim)
    scope = _SCOPES[-1]
    if name not in scope:
        scope[name] = pyro.plate(name, size, dim=dim)
    plate = scope[name]
    if plate.size != size:
        raise ValueError(f"The {name!r} plate has size {plate.size} in this call of the prior, but got {size}.")
    return plate


def perturbations_plate(n_perturbations: int) -> pyro.plate:
    """The ``perturbations`` plate (dim -2): sites inside are per perturbation."""
    return _plate("perturbations", n_perturbations, PERTURBATIONS_DIM)


def latents_plate(n_latent: int) -> pyro.plate:
    """The ``latents`` plate (dim -1)."""
    return _plate("latents", n_latent, LATENTS_DIM)


@contextlib.contextmanager
def plates(n_perturbations: int, n_latent: int):
    """The ``perturbations`` x ``latents`` plates: sites inside have shape ``[P, K]``."""
    with perturbations_plate(n_perturbations), latents_plate(n_latent):
        yield
