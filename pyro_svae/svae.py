"""The fitted model, :class:`SVAE`: thin methods over the stages that read it.

Each method reads its AnnData once (:func:`~pyro_svae.data.read_screen` against the model's
layout), enters the model's parameters once (:meth:`SVAE.scope`) and calls one stage:
:mod:`~pyro_svae.posterior` (targets, shifts), :mod:`~pyro_svae.heldout` (IWELBO),
:mod:`~pyro_svae.interventions` (predictions), :mod:`~pyro_svae.predictive` (checks),
:mod:`~pyro_svae.inference_data` (ArviZ), :mod:`~pyro_svae.transfer`, :mod:`~pyro_svae.persistence`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import numpy as np
import pandas as pd
import pyro
import torch

from . import heldout, inference_data, interpretation, interventions, persistence, predictive, results, transfer
from .data import ScreenData, read_screen
from .elbo import local_elbo
from .factory import Components
from .guide import encode
from .posterior import draw_globals, expected_shifts
from .runtime import DataOnDevice, param_scope, per_cell
from .train import TrainConfig

__all__ = ["SVAE"]

logger = logging.getLogger(__name__)


class SVAE:
    """A fitted sparse mechanism shift VAE. Made by :func:`pyro_svae.fit` or :func:`pyro_svae.load`.

    Attributes
    ----------
    history : pandas.DataFrame
        One row per epoch: ``epoch``, ``train_elbo``, ``validation_elbo`` (per-cell ELBO) and
        ``loss`` (the optimised objective per cell, with the warm-up weight).
    perturbation_names, gene_names, batch_names : tuple of str
    restarts : pandas.DataFrame or None
        With ``fit(n_restarts=N)``, N > 1: each restart's ``seed``, ``elbo``, ``epochs``,
        ``seconds`` and ``chosen`` (:func:`pyro_svae.restarts.best_of`); saved with the model.
    adata : anndata.AnnData or None
        The AnnData the model was fitted on (a reference, never modified); the default data of
        the methods below.
    """

    def __init__(self, components: Components, params: dict, *, history: Optional[pd.DataFrame] = None,
                 train_config: Optional[TrainConfig] = None, device="cpu", adata=None, restarts=None):
        self.components, self.params = components, params
        self.history = pd.DataFrame() if history is None else history
        self.restarts = None if restarts is None else pd.DataFrame(restarts)
        self.train_config = train_config or TrainConfig()
        self.device, self.adata = torch.device(device), adata
        self.transfer_history = self.target_trace = None

    config = property(lambda self: self.components.config)
    layout = property(lambda self: self.components.layout)
    nets = property(lambda self: self.components.nets)
    prior = property(lambda self: self.components.prior)
    gene_names = property(lambda self: self.layout.genes)
    perturbation_names = property(lambda self: self.layout.perturbations)
    batch_names = property(lambda self: self.layout.batches)

    @property
    def restored_epoch(self) -> Optional[int]:
        """The epoch whose parameters the model holds (early stopping restores the best), if known."""
        if "restored" not in self.history or not self.history["restored"].any():
            return None
        return int(self.history.loc[self.history["restored"].astype(bool), "epoch"].iloc[-1])

    def __repr__(self) -> str:
        return (f"SVAE(prior={self.config.prior!r}, n_latent={self.config.n_latent}, likelihood={self.config.likelihood!r}, "
                f"{len(self.perturbation_names)} perturbations, {len(self.gene_names)} genes, {len(self.history)} epochs)")

    # ---- plumbing -------------------------------------------------------------------------
    def scope(self):
        """The model's parameters in Pyro's param store while inside (the global store is restored)."""
        return param_scope(self.params)

    def _adata(self, adata):
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("No AnnData given and none kept from training (a loaded model): pass adata.")
        return adata

    def _read(self, adata=None) -> ScreenData:
        c, layout = self.config, self.layout
        return read_screen(self._adata(adata), c.perturbation_key, c.control, layer=c.layer, batch_key=c.batch_key,
                           separator=c.separator, allow_non_integer=c.allow_non_integer, gene_names=layout.genes,
                           perturbation_names=layout.perturbations, batch_names=layout.batches, require_control=False)

    def _minibatches(self, screen: ScreenData, batch_size: int):
        on_device = DataOnDevice(screen, self.device)
        for start in range(0, screen.n_cells, batch_size):
            index = np.arange(start, min(start + batch_size, screen.n_cells))
            yield index, on_device.minibatch(index)

    @contextlib.contextmanager
    def _seeded(self, seed: Optional[int]):
        if seed is not None:
            pyro.set_rng_seed(seed)
        with self.scope(), torch.no_grad():
            yield

    # ---- cells ----------------------------------------------------------------------------
    def get_latent(self, adata=None, batch_size: int = 1024) -> np.ndarray:
        """Posterior mean of ``z`` for each cell: ``[n_cells, n_latent]``."""
        screen = self._read(adata)
        with self.scope(), torch.no_grad():
            shifts = expected_shifts(self.components, self.device)  # None unless the encoder is conjugate
            return per_cell(self._minibatches(screen, batch_size), screen.n_cells, lambda b: encode(self.nets, b, shifts).mean)

    def elbo(self, adata=None, by: Optional[str] = None, batch_size: int = 1024, seed: Optional[int] = None):
        """Per-cell ELBO ``E_q[log p(x | z)] - KL(q(z | x) || p(z | delta))``, averaged over cells.

        With ``by`` (a column of ``adata.obs``, e.g. ``"perturbation"``) a ``pandas.Series`` of the
        mean per group. One draw of the global sites.
        """
        adata = self._adata(adata)
        screen = self._read(adata)
        functions = self.components.functions()
        with self._seeded(seed):
            values = per_cell(self._minibatches(screen, batch_size), screen.n_cells, lambda b: local_elbo(*functions, b))
        return results.by_group(values, adata, by, "elbo")

    # ---- perturbations --------------------------------------------------------------------
    def global_draws(self, num_samples: int = 200, seed: Optional[int] = None):
        """Guide draws of the global sites (:class:`~pyro_svae.posterior.GlobalDraws`, tensors ``[S, ...]``)."""
        with self._seeded(seed):
            return draw_globals(self.components, num_samples, self.device)

    def intervention_targets(self, num_samples: int = 200, seed: Optional[int] = None) -> pd.DataFrame:
        """Posterior inclusion probabilities ``[perturbations x latents]`` in [0, 1]: for
        ``spike_and_slab``, ``q(mask = 1)``, the variational posterior that the latent is a target
        (at the ELBO's optimum, the posterior of the mask given the perturbation's cells and the
        other parameters); for a prior with one Bernoulli-family site per perturbation and latent,
        its guide probability; otherwise the guide's probability that ``|delta| > 0.5``."""
        return results.inclusion_table(self.global_draws(num_samples, seed), self.layout, self.config.n_latent)

    def shifts(self, num_samples: int = 200, seed: Optional[int] = None) -> pd.DataFrame:
        """Posterior mean effective shift ``E_q[delta]``: ``[perturbations x latents]``."""
        return results.shift_table(self.global_draws(num_samples, seed), self.layout, self.config.n_latent)

    def target_calls(self, fdr: float = 0.05, num_samples: int = 200, min_pip: float = 0.5) -> pd.DataFrame:
        """Targets called at a Bayesian false discovery rate: of the (perturbation, latent) pairs
        with PIP > ``min_pip``, the largest set by decreasing PIP whose mean ``1 - PIP`` is at most
        ``fdr`` (:func:`pyro_svae.results.call_targets`). Columns ``perturbation``, ``latent``,
        ``pip``; ``attrs["threshold"]`` (smallest PIP called), ``attrs["expected_fdp"]``."""
        return results.call_targets(self.intervention_targets(num_samples), fdr, min_pip)

    # ---- gene space ----------------------------------------------------------------------
    def gene_programs(self, adata=None, batch_size: int = 512) -> pd.DataFrame:
        """Each latent's gene program ``[K x G]``: the mean over the cells of ``adata`` (default: the
        training cells) of ``d log mu_g / d z_k``, the change in gene ``g``'s log mean expression per
        unit of latent ``k`` (:func:`pyro_svae.interpretation.gene_programs`; its ``top_genes``
        lists a latent's strongest genes)."""
        screen = self._read(adata)
        with self.scope():
            return interpretation.gene_programs(self.components, self._minibatches(screen, batch_size), screen.n_cells)

    def perturbation_effects(self, perturbations=None, interval: float = 0.9, num_samples: int = 200,
                             n_cells: int = 200, seed: Optional[int] = None) -> pd.DataFrame:
        """Predicted log2 fold change of mean expression against controls, per perturbation (default:
        all) and gene, with a central credible ``interval`` over the global sites and the cells: a
        long table ``perturbation, gene, lfc, lower, upper``
        (:func:`pyro_svae.interpretation.perturbation_effects`)."""
        labels = list(self.perturbation_names) if perturbations is None else (
            [perturbations] if isinstance(perturbations, str) else list(perturbations))
        codes = interventions.encode_labels(self.components, labels)
        batches = list(range(self.layout.n_batches)) or None
        with self._seeded(seed):
            return interpretation.perturbation_effects(self.components, labels, codes, batches, self.device,
                                                       num_samples, n_cells, interval)

    # ---- checks and export ----------------------------------------------------------------
    def posterior_predictive(self, adata=None, num_samples: int = 100, genes=None, cells=None,
                             batch_size: int = 1024, seed: Optional[int] = None) -> np.ndarray:
        """Replicated counts ``[num_samples, n_cells, n_genes]`` (int32) from :class:`pyro.infer.Predictive`.

        Each draw is ``z ~ q(z | x)`` then ``counts ~ p(x | z)`` with the cell's observed library
        size, batch and perturbation; cells in minibatches (at most ~32 million values at a time),
        only the selected ``genes`` / ``cells`` kept (names, positions or boolean masks).
        """
        screen = self._read(adata)
        with self._seeded(seed):
            return predictive.posterior_predictive(self.components, screen, self.device, num_samples, genes, cells,
                                                   batch_size)["counts"]

    def ppc_summary(self, adata=None, num_samples: int = 100, genes=None, cells=None, interval: float = 0.9,
                    seed: Optional[int] = None) -> pd.DataFrame:
        """Posterior predictive check of the statistics a single-cell user looks at
        (:func:`pyro_svae.predictive.ppc_summary`): per gene mean, variance and zero fraction, per
        cell library size, per perturbation and gene the ``log1p`` expression shift against
        controls; each with its observed value and central ``interval``. One row per item."""
        adata = self._adata(adata)
        screen = self._read(adata)
        with self._seeded(seed):
            draws = predictive.posterior_predictive(self.components, screen, self.device, num_samples, genes, cells)
        labels = adata.obs[self.config.perturbation_key].astype(str).to_numpy()[draws["cells"]]
        return predictive.ppc_summary(screen.counts[draws["cells"]][:, draws["genes"]], draws["counts"], labels,
                                      self.config.control, np.asarray(self.gene_names)[draws["genes"]],
                                      np.asarray(screen.cell_names)[draws["cells"]], interval)

    def to_arviz(self, adata=None, num_samples: int = 100, genes=None, cells=None, batch_size: int = 1024,
                 log_likelihood: bool = False, seed: Optional[int] = None):
        """The fit as ArviZ ``InferenceData`` (an xarray ``DataTree`` with ArviZ >= 1); see
        :func:`pyro_svae.inference_data.to_arviz` for the groups. ``log_likelihood=True`` adds the
        per-cell log-likelihood of each global draw, ``z`` integrated out by importance sampling."""
        adata = self._adata(adata)
        screen = self._read(adata)
        labels = adata.obs[self.config.perturbation_key].astype(str).to_numpy()
        with self._seeded(seed):
            return inference_data.to_arviz(self.components, screen, labels, self.device, num_samples, genes, cells,
                                           batch_size, log_likelihood)

    def write(self, adata, latent_key: str = "X_svae", uns_key: str = "svae", num_samples: int = 200,
              copy: bool = False):
        """Write the results into ``adata``, scverse style: ``obsm[latent_key]`` (posterior mean
        latents) and ``uns[uns_key]`` (:func:`pyro_svae.results.to_uns`: plain arrays and strings
        that survive ``write_h5ad``; :func:`pyro_svae.results.from_uns` rebuilds the tables).
        Nothing else is touched. With ``copy=True`` a modified copy is returned instead."""
        self._read(adata)  # validates genes and labels before anything is written
        if copy:
            adata = adata.copy()
        adata.obsm[latent_key] = self.get_latent(adata)
        adata.uns[uns_key] = results.to_uns(self, num_samples)
        return adata if copy else None

    def save(self, path, overwrite: bool = False) -> None:
        """Write the model to directory ``path``: ``config.json`` and ``params.pt`` (tensors only,
        read back with ``torch.load(weights_only=True)``, which cannot run code; its SHA-256 is
        kept in ``config.json`` so a tampered or truncated file is refused). Read with
        :func:`pyro_svae.load`."""
        persistence.save(path, self.components, self.params, self.train_config, self.history, overwrite,
                         restarts=self.restarts)

    # ---- transfer, held-out likelihood and predictions -----------------------------------
    def transfer(self, adata_new, perturbation_key: Optional[str] = None, max_epochs="auto", batch_size: int = 256,
                 lr: Optional[float] = None, seed: int = 0, progress: bool = False) -> "SVAE":
        """A model that also knows the perturbations of ``adata_new`` it has not seen
        (:func:`pyro_svae.transfer.transfer`): everything known stays frozen, exactly; the new
        perturbations' rows of the prior's guide parameters are fitted on ``adata_new``. Returns a
        new model (this one is unchanged) with ``transfer_history``."""
        components, params, history = transfer.transfer(
            self.components, self.params, adata_new, self.train_config, self.device, perturbation_key,
            max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
        result = SVAE(components, params, history=self.history.copy(), train_config=self.train_config,
                      device=self.device, adata=adata_new, restarts=self.restarts)
        result.transfer_history = history
        return result

    def marginal_log_likelihood(self, adata=None, n_samples: int = 100, by: Optional[str] = None,
                                batch_size: int = 256, seed: Optional[int] = None):
        """Importance-weighted ELBO per cell (:mod:`pyro_svae.heldout`), averaged (or per ``by``
        group): a lower bound on the held-out ``log E_q(g)[p(x | g)]`` that tightens with
        ``n_samples`` (1 gives an ELBO); masks a prior integrates out are summed exactly."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, but got {n_samples}.")
        adata = self._adata(adata)
        screen = self._read(adata)
        with self._seeded(seed):
            draws = draw_globals(self.components, n_samples, self.device)
            values = per_cell(self._minibatches(screen, batch_size), screen.n_cells,
                              lambda b: heldout.iwelbo(self.components, b, draws))
        return results.by_group(values.astype(np.float64), adata, by, "marginal_log_likelihood")

    def predict(self, perturbations, n_cells: int = 100, batch: Optional[str] = None, library=None,
                seed: Optional[int] = None):
        """Simulate ``n_cells`` cells for each label of ``perturbations`` (``"A"``, ``"A+B"``, or the
        control): a draw of its members' shifts per cell (masks sampled), ``z ~ Normal(sum of the
        members' shifts, I)``, counts from the decoder; combinations never seen together are
        predicted. ``library``: a number or an array of library sizes (default: drawn from the
        training cells); ``batch``: a batch name (default: spread over batches). Returns an AnnData
        (``obs[perturbation_key]``, ``obs["library_size"]``, ``obsm["z"]``, ``obsm["shift"]``)."""
        if library is None:
            if self.adata is None:
                raise ValueError("library=None draws library sizes from the training cells, which a loaded model "
                                 "does not keep: pass library (a number or an array of library sizes).")
            library = self._read(self.adata).library
        with self._seeded(seed):
            return interventions.predict(self.components, perturbations, n_cells, batch, library, self.device, seed)

    def counterfactual(self, adata, perturbation: str, num_samples: int = 10, seed: Optional[int] = None,
                       batch_size: int = 1024) -> np.ndarray:
        """Counts ``[num_samples, n_cells, n_genes]`` (int32) of the cells of ``adata`` under
        ``perturbation`` (a label or ``"A+B"``): ``z ~ q(z | x)`` (abduction), the cell's own shift
        replaced by that of ``perturbation``, decoded with its library size and batch."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, but got {num_samples}.")
        screen = self._read(adata)
        target = torch.as_tensor(interventions.encode_labels(self.components, [perturbation]), device=self.device)
        with self._seeded(seed):
            return interventions.counterfactual_counts(self.components, self._minibatches(screen, batch_size),
                                                       screen.n_cells, target, num_samples, self.device)
