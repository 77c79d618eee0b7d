"""A model built from its configuration: networks, prior, guide and likelihood for a layout of
genes, perturbations and batches. ``fit``, ``load`` and ``transfer`` all build models here."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np
import torch

from .elbo import local_elbo
from .guide import PriorGuide, guide
from .likelihoods import CountLikelihood, get_likelihood
from .model import model
from .nets import Networks
from .priors import PRIORS, resolve_min_shift, resolve_prior
from .sites import PriorSite, describe_prior

__all__ = ["SVAEConfig", "Layout", "Components", "build", "layout_of", "create_params", "with_resolved_min_shift"]


@dataclass(frozen=True)
class SVAEConfig:
    """Everything that defines a model besides its parameters: data layout and architecture."""

    n_latent: int = 10
    prior: str = "spike_and_slab"
    prior_options: dict = field(default_factory=dict)
    likelihood: str = "nb"
    n_hidden: int = 128
    n_layers: int = 2
    #: the family of q(z | ...): ``"counts"``, ``"conjugate"`` or ``"full"`` (:data:`pyro_svae.nets.ENCODERS`)
    encoder: str = "counts"
    perturbation_key: str = "perturbation"
    control: Optional[str] = "control"
    layer: Optional[str] = None
    batch_key: Optional[str] = None
    separator: Optional[str] = "+"
    allow_non_integer: bool = False


class Layout(NamedTuple):
    """What a model was built for: the names of its genes, perturbations and batches, and the
    training cells of each perturbation (the data size a prior may scale its sparsity to)."""

    genes: Tuple[str, ...]
    perturbations: Tuple[str, ...]
    batches: Optional[Tuple[str, ...]]
    cells_per_perturbation: Tuple[int, ...]

    @property
    def n_batches(self) -> int:
        return 0 if self.batches is None else len(self.batches)


def layout_of(screen, cells: Optional[np.ndarray] = None) -> Layout:
    """The layout of a :class:`~pyro_svae.data.ScreenData`; ``cells`` (positions) restricts the
    cell counts to the training cells."""
    members = screen.perturbations if cells is None else screen.perturbations[cells]
    counts = np.bincount(members.reshape(-1), minlength=screen.n_perturbations + 1)[:screen.n_perturbations]
    return Layout(tuple(screen.gene_names), tuple(screen.perturbation_names), screen.batch_names,
                  tuple(int(c) for c in counts))


@dataclass
class Components:
    """The pieces of one model: its networks, bound prior, prior sites, guide and likelihood."""

    config: SVAEConfig
    layout: Layout
    nets: Networks
    prior: Callable
    sites: Tuple[PriorSite, ...]
    prior_guide: PriorGuide
    likelihood: CountLikelihood
    #: the prior as given to :func:`build` (a name or the unbound function), to build it again
    source: object = None

    @property
    def n_perturbations(self) -> int:
        return len(self.layout.perturbations)

    def functions(self):
        """``(model, guide)`` with everything but the data bound."""
        static = dict(nets=self.nets, prior=self.prior, n_perturbations=self.n_perturbations,
                      likelihood=self.likelihood.name)
        return functools.partial(model, **static), functools.partial(guide, prior_guide=self.prior_guide, **static)


def build(config: SVAEConfig, layout: Layout, prior: Optional[Callable] = None, nets: Optional[Networks] = None) -> Components:
    """The components of ``config`` for ``layout`` (parameters are created on first use).

    ``prior`` is needed for a custom prior (``config.prior`` then only names it); ``nets`` reuses
    networks already built for the same genes, latents and batches.
    """
    if prior is None:
        if config.prior not in PRIORS:
            raise ValueError(f"This model uses the custom prior {config.prior!r}: pass the function again "
                             "(e.g. load(path, prior=fn)).")
        prior = config.prior
    likelihood = get_likelihood(config.likelihood)
    prior_fn = resolve_prior(prior, n_cells=layout.cells_per_perturbation, **config.prior_options)
    if nets is None:
        nets = Networks(len(layout.genes), config.n_latent, config.n_hidden, config.n_layers, layout.n_batches,
                        zero_inflated=likelihood.zero_inflated, encoder=config.encoder)
    sites = describe_prior(prior_fn, len(layout.perturbations), config.n_latent)
    return Components(config, layout, nets, prior_fn, sites, PriorGuide(sites), likelihood, source=prior)


def with_resolved_min_shift(config: SVAEConfig, prior, typical_shift: Optional[float]) -> SVAEConfig:
    """``config`` with a prior option ``min_shift="auto"`` (given, or the prior's default) resolved to
    a number from the screen's ``typical_shift`` (:func:`pyro_svae.priors.resolve_min_shift`), so
    the model records, saves and transfers with the value it was fitted with."""
    function = PRIORS.get(config.prior) if prior is None or isinstance(prior, str) else prior
    while isinstance(function, functools.partial):
        function = function.func
    parameters = inspect.signature(function).parameters if callable(function) else {}
    if "min_shift" not in parameters:
        return config
    value = config.prior_options.get("min_shift", parameters["min_shift"].default)
    if value != "auto":
        return config
    return dataclasses.replace(config, prior_options={**config.prior_options,
                                                      "min_shift": resolve_min_shift("auto", typical_shift)})


def create_params(components: Components, device) -> None:
    """Run model and guide once on a dummy cell, so that every parameter exists in the param store."""
    dummy = {"library": torch.ones(1, device=device),
             "perturbations": torch.zeros(1, 1, dtype=torch.long, device=device),
             "batch": torch.zeros(1, dtype=torch.long, device=device) if components.layout.n_batches else None,
             "counts": torch.zeros(1, len(components.layout.genes), device=device)}
    local_elbo(*components.functions(), dummy)
