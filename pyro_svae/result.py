"""The fitted model: latents, targets, shifts, ELBO, save and load."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch

from .data import ScreenData, read_screen
from .guide import guide
from .model import model
from .nets import Networks
from .train import DataOnDevice, TrainConfig, local_elbo, param_scope

__all__ = ["SVAEConfig", "SVAE", "call_targets", "SHIFT_THRESHOLD"]

logger = logging.getLogger(__name__)

#: For priors without a mask, a latent counts as a target when ``|shift| > SHIFT_THRESHOLD``
#: (in units of the prior's unit standard deviation of ``z``).
SHIFT_THRESHOLD = 0.5


@dataclass(frozen=True)
class SVAEConfig:
    """Everything that defines a model besides its parameters: data layout and architecture."""

    n_latent: int = 10
    prior: str = "spike_and_slab"
    prior_options: dict = field(default_factory=dict)
    likelihood: str = "nb"
    n_hidden: int = 128
    n_layers: int = 2
    perturbation_key: str = "perturbation"
    control: Optional[str] = "control"
    layer: Optional[str] = None
    batch_key: Optional[str] = None
    separator: Optional[str] = "+"
    allow_non_integer: bool = False


class SVAE:
    """A fitted sparse mechanism shift VAE. Made by :func:`pyro_svae.fit` or :func:`pyro_svae.load`.

    Attributes
    ----------
    history : pandas.DataFrame
        One row per epoch: ``epoch``, ``train_elbo``, ``validation_elbo`` (per-cell ELBO) and
        ``loss`` (the optimised objective per cell, with the warm-up weight).
    perturbation_names, gene_names, batch_names : tuple of str
    adata : anndata.AnnData or None
        The AnnData the model was fitted on (a reference, never modified); the default data of
        the methods below.
    """

    def __init__(self, config: SVAEConfig, nets: Networks, prior: Callable, prior_sites, params: dict,
                 screen: ScreenData, train_config: TrainConfig, history: pd.DataFrame, device, adata=None):
        self.config, self.nets, self.prior, self.prior_sites = config, nets, prior, prior_sites
        self.params, self.train_config, self.history, self.device = params, train_config, history, torch.device(device)
        self.gene_names, self.perturbation_names = screen.gene_names, screen.perturbation_names
        self.batch_names = screen.batch_names
        self.adata = adata

    def __repr__(self) -> str:
        return (f"SVAE(prior={self.config.prior!r}, n_latent={self.config.n_latent}, likelihood={self.config.likelihood!r}, "
                f"{len(self.perturbation_names)} perturbations, {len(self.gene_names)} genes, {len(self.history)} epochs)")

    # ---- data -----------------------------------------------------------------------------
    def _read(self, adata=None) -> ScreenData:
        adata = self.adata if adata is None else adata
        if adata is None:
            raise ValueError("No AnnData given and none kept from training (a loaded model): pass adata.")
        genes = list(map(str, adata.var_names))
        if genes != list(self.gene_names):
            if sorted(genes) != sorted(self.gene_names):
                missing = sorted(set(self.gene_names) - set(genes))[:5]
                raise ValueError(f"adata.var_names differ from the {len(self.gene_names)} training genes "
                                 f"(e.g. missing {missing}); expected the same genes.")
            warnings.warn("adata.var_names are the training genes in another order; reordering by name.", stacklevel=3)
            adata = adata[:, list(self.gene_names)]
        c = self.config
        return read_screen(adata, c.perturbation_key, c.control, layer=c.layer, batch_key=c.batch_key,
                           separator=c.separator, allow_non_integer=c.allow_non_integer,
                           perturbation_names=self.perturbation_names, batch_names=self.batch_names,
                           require_control=False)

    def _functions(self, n_perturbations: Optional[int] = None):
        static = dict(nets=self.nets, prior=self.prior, likelihood=self.config.likelihood,
                      n_perturbations=n_perturbations or len(self.perturbation_names))
        return functools.partial(model, **static), functools.partial(guide, prior_sites=self.prior_sites, **static)

    def _minibatches(self, screen: ScreenData, batch_size: int):
        on_device = DataOnDevice(screen, self.device)
        for start in range(0, screen.n_cells, batch_size):
            yield on_device.minibatch(np.arange(start, min(start + batch_size, screen.n_cells)))

    # ---- cells ----------------------------------------------------------------------------
    def get_latent(self, adata=None, batch_size: int = 1024) -> np.ndarray:
        """Posterior mean of ``z`` for each cell: ``[n_cells, n_latent]``."""
        screen = self._read(adata)
        with torch.no_grad():
            locs = [self.nets.encoder(b["counts"], b["batch"])[0].cpu() for b in self._minibatches(screen, batch_size)]
        return torch.cat(locs).numpy()

    def elbo(self, adata=None, by: Optional[str] = None, batch_size: int = 1024):
        """Per-cell ELBO ``E_q[log p(x | z)] - KL(q(z | x) || p(z | delta))``, averaged over cells.

        With ``by`` (a column of ``adata.obs``, e.g. ``"perturbation"``) a ``pandas.Series`` of the
        mean per group. One draw of the global sites.
        """
        adata = self.adata if adata is None else adata
        screen = self._read(adata)
        model_fn, guide_fn = self._functions()
        with param_scope(self.params), torch.no_grad():
            values = torch.cat([local_elbo(model_fn, guide_fn, b).cpu() for b in self._minibatches(screen, batch_size)])
        values = values.numpy()
        if by is None:
            return float(values.mean())
        if by not in adata.obs.columns:
            raise KeyError(f"by={by!r} is not a column of adata.obs; available columns: {list(adata.obs.columns)}.")
        return pd.Series(values, index=adata.obs_names).groupby(adata.obs[by].astype(str).to_numpy()).mean().rename("elbo")

    # ---- perturbations --------------------------------------------------------------------
    def _global_draws(self, num_samples: int):
        """Posterior means of the inclusion probabilities and effective shifts, ``[P, K]`` each."""
        from .inference_data import global_samples

        draws = global_samples(self, num_samples)
        deltas = draws["delta"]
        inclusion = draws["inclusion"] if "inclusion" in draws else (np.abs(deltas) > SHIFT_THRESHOLD).astype(np.float32)
        return inclusion.mean(0), deltas.mean(0)

    def _frame(self, values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(values, index=pd.Index(self.perturbation_names, name="perturbation"),
                            columns=pd.RangeIndex(self.config.n_latent, name="latent"))

    def intervention_targets(self, num_samples: int = 200) -> pd.DataFrame:
        """Posterior inclusion probabilities ``[perturbations x latents]`` in [0, 1].

        For a prior that reports its inclusion probability (``ShiftMoments.inclusion``, as
        ``spike_and_slab``) or has a ``mask`` site, ``E_q[P(mask = 1)]``; otherwise the probability
        that ``|delta| > SHIFT_THRESHOLD`` under the guide.
        """
        return self._frame(self._global_draws(num_samples)[0])

    def shifts(self, num_samples: int = 200) -> pd.DataFrame:
        """Posterior mean effective shift ``E_q[delta]``: ``[perturbations x latents]``."""
        return self._frame(self._global_draws(num_samples)[1])

    # ---- posterior predictive and export ------------------------------------------------
    def posterior_predictive(self, adata=None, num_samples: int = 100, genes=None, cells=None,
                             batch_size: int = 1024) -> np.ndarray:
        """Replicated counts from :class:`pyro.infer.Predictive` over the guide.

        Each draw is ``z ~ q(z | x)`` then ``counts ~ p(x | z)`` with the cell's observed library
        size, batch and perturbation. Cells are processed in minibatches (at most ~32 million
        replicated values at a time), and only the selected genes are kept, so that large
        screens stay in memory: select with ``genes`` / ``cells`` (names, positions or boolean
        masks).

        Returns
        -------
        numpy.ndarray ``[num_samples, n_cells, n_genes]``, int32.
        """
        from .predictive import posterior_predictive

        return posterior_predictive(self, adata, num_samples, genes=genes, cells=cells, batch_size=batch_size)

    def ppc_summary(self, adata=None, num_samples: int = 100, genes=None, cells=None, interval: float = 0.9):
        """Posterior predictive check of the statistics a single-cell user looks at.

        Per gene mean, variance and zero fraction; per cell library size; per perturbation and
        gene the mean ``log1p`` normalised expression shift against the control cells. Each with
        its observed value and central predictive interval; see :func:`pyro_svae.predictive.ppc_summary`.

        Returns
        -------
        pandas.DataFrame, one row per statistic and item (tidy).
        """
        from .predictive import positions, posterior_predictive, ppc_summary

        adata = self.adata if adata is None else adata
        screen = self._read(adata)
        cell_pos = positions(cells, screen.cell_names, "cells")
        gene_pos = positions(genes, self.gene_names, "genes")
        replicated = posterior_predictive(self, adata, num_samples, genes=gene_pos, cells=cell_pos, screen=screen)
        labels = adata.obs[self.config.perturbation_key].astype(str).to_numpy()[cell_pos]
        return ppc_summary(screen.counts[cell_pos][:, gene_pos], replicated, labels, self.config.control,
                           np.asarray(self.gene_names)[gene_pos], np.asarray(screen.cell_names)[cell_pos], interval)

    def to_arviz(self, adata=None, num_samples: int = 100, genes=None, cells=None, batch_size: int = 1024):
        """The fit as ArviZ ``InferenceData`` (an xarray ``DataTree`` with ArviZ >= 1).

        Groups: ``posterior`` (every prior site, ``delta`` the effective shifts and ``inclusion``
        where the prior has one, dims ``(perturbation, latent)``; ``z`` dims ``(cell, latent)``),
        ``posterior_predictive`` and ``observed_data`` (``counts``, dims ``(cell, gene)``),
        ``log_likelihood`` (``counts``: ``log p(x_i | z_i)`` per cell, summed over genes, so that
        ``az.loo`` leaves out cells; with a latent per cell, expect large Pareto k: use it to find
        poorly fitted cells, not to compare models), ``constant_data`` (``perturbation_label`` and
        ``library_size`` per cell). One chain of ``num_samples`` guide draws.
        """
        from .inference_data import to_arviz

        return to_arviz(self, adata, num_samples, genes=genes, cells=cells, batch_size=batch_size)

    def write(self, adata, latent_key: str = "X_svae", uns_key: str = "svae", num_samples: int = 200,
              copy: bool = False):
        """Write the results into ``adata``, scverse style.

        ``adata.obsm[latent_key]``: posterior mean latents ``[n_cells, n_latent]``;
        ``adata.uns[uns_key]``: a dict with ``perturbation_names`` ``[P]``, ``inclusion_probabilities``
        and ``shifts`` ``[P, K]`` (as :meth:`intervention_targets` and :meth:`shifts`), and
        ``params`` (prior, its options, likelihood, n_latent). Nothing else is touched; the
        entries are replaced if present, and survive ``write_h5ad``. With ``copy=True`` a modified
        copy is returned and ``adata`` is left as it was.
        """
        self._read(adata)  # validates genes and labels before anything is written
        if copy:
            adata = adata.copy()
        latent = self.get_latent(adata)
        inclusion, deltas = self._global_draws(num_samples)
        c = self.config
        adata.obsm[latent_key] = latent
        adata.uns[uns_key] = {
            "perturbation_names": np.asarray(self.perturbation_names, dtype=object),
            "inclusion_probabilities": inclusion, "shifts": deltas,
            "params": {"prior": c.prior, "prior_options": json.dumps(c.prior_options), "likelihood": c.likelihood,
                       "n_latent": c.n_latent, "perturbation_key": c.perturbation_key,
                       "control": "" if c.control is None else c.control},
        }
        return adata if copy else None

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path, overwrite: bool = False) -> None:
        """Write the model to directory ``path``: ``config.json`` and ``params.pt`` (tensors only).

        ``params.pt`` is read back with ``torch.load(weights_only=True)``, which cannot run code;
        its SHA-256 is kept in ``config.json`` so a tampered or truncated file is refused.
        Read it with :func:`pyro_svae.load`.
        """
        from .persistence import save

        save(self, path, overwrite)

    # ---- transfer, held-out likelihood and predictions -----------------------------------
    def transfer(self, adata_new, perturbation_key: Optional[str] = None, max_epochs="auto", batch_size: int = 256,
                 lr: Optional[float] = None, seed: int = 0, progress: bool = False) -> "SVAE":
        """A model that also knows the perturbations of ``adata_new`` it has not seen.

        The paper's out-of-distribution protocol: encoder, decoder, dispersion and every known
        perturbation's parameters stay frozen (exactly); the new perturbations (labels, or members
        of ``"A+B"`` labels, not seen in training) get fresh rows in the prior's guide parameters,
        fitted by SVI on the cells of ``adata_new`` (a few per perturbation is the intended use).
        ``max_epochs="auto"`` gives about 2,000 steps; ``lr`` defaults to the fit's ``prior_lr``.

        Returns
        -------
        SVAE
            A new model (this one is unchanged) whose ``perturbation_names`` end with the new ones,
            ``adata`` is ``adata_new`` and ``transfer_history`` the transfer's per-epoch history.
        """
        from .transfer import transfer

        return transfer(self, adata_new, perturbation_key, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
                        seed=seed, progress=progress)

    def marginal_log_likelihood(self, adata=None, n_samples: int = 100, by: Optional[str] = None,
                                batch_size: int = 256, seed: Optional[int] = None):
        """Importance-weighted ELBO per cell (IWELBO, ``n_samples`` importance samples), averaged.

        A lower bound on the held-out log-likelihood ``log E_q(g)[p(x | g)]`` that tightens with
        ``n_samples`` (1 gives an ELBO); the global sites ``g`` are drawn from the guide once per
        importance sample, masks a prior integrates out are summed over exactly. Cells are
        processed ``batch_size`` at a time and samples in chunks, so memory stays bounded for
        ``n_samples=1000``. With ``by`` (an ``obs`` column) a ``pandas.Series`` of group means.
        """
        from .likelihood import marginal_log_likelihood

        return marginal_log_likelihood(self, adata, n_samples, by=by, batch_size=batch_size, seed=seed)

    def predict(self, perturbations, n_cells: int = 100, batch: Optional[str] = None, library=None,
                seed: Optional[int] = None):
        """Simulate cells under any combination of known perturbations.

        For each label in ``perturbations`` (``"A"``, ``"A+B"``, or the control label),
        ``n_cells`` cells: a draw of the global sites from the guide per cell (masks sampled),
        ``z ~ Normal(sum of the members' shifts, I)``, counts from the decoder. A combination's
        shift is the sum of its members' (the model's multi-hot design), so combinations never
        seen together are predicted. ``library``: a number or an array of library sizes (default:
        drawn from the training cells); ``batch``: a batch name (default: spread over batches).

        Returns
        -------
        anndata.AnnData
            ``X`` counts ``[len(perturbations) * n_cells, n_genes]``; ``obs[perturbation_key]``,
            ``obs["library_size"]``; ``obsm["z"]`` and ``obsm["shift"]`` ``[n, n_latent]``.
        """
        from .predict import predict

        return predict(self, perturbations, n_cells=n_cells, batch=batch, library=library, seed=seed)

    def counterfactual(self, adata, perturbation: str, num_samples: int = 10, seed: Optional[int] = None) -> np.ndarray:
        """Counts of the same cells under another intervention.

        For each cell of ``adata`` (typically controls): ``z ~ q(z | x)`` (abduction), its own
        effective shift replaced by that of ``perturbation`` (a label or a combination ``"A+B"``),
        decoded with the cell's library size and batch. One draw of the global sites per sample.

        Returns
        -------
        numpy.ndarray ``[num_samples, n_cells, n_genes]``, int32.
        """
        from .predict import counterfactual

        return counterfactual(self, adata, perturbation, num_samples=num_samples, seed=seed)

    def target_calls(self, fdr: float = 0.05, num_samples: int = 200) -> pd.DataFrame:
        """Targets called with a Bayesian false discovery rate (Newton et al. 2004).

        Sorts all (perturbation, latent) posterior inclusion probabilities and calls the largest
        set whose expected false discovery proportion, the mean of ``1 - PIP`` over the set, is at
        most ``fdr``. More calls as ``fdr`` grows.

        Returns
        -------
        pandas.DataFrame
            One row per call: ``perturbation``, ``latent``, ``pip``; ``attrs["threshold"]`` is the
            smallest PIP called and ``attrs["expected_fdp"]`` the expected false discovery proportion.
        """
        return call_targets(self.intervention_targets(num_samples), fdr)


def call_targets(pips: pd.DataFrame, fdr: float) -> pd.DataFrame:
    """The Bayesian FDR calls of :meth:`SVAE.target_calls` from a PIP table (perturbations x latents)."""
    if not 0.0 <= fdr < 1.0:
        raise ValueError(f"fdr must lie in [0, 1), but got {fdr}.")
    long = pips.stack().rename("pip").reset_index().sort_values("pip", ascending=False, kind="stable")
    expected_fdp = np.cumsum(1.0 - long["pip"].to_numpy()) / np.arange(1, len(long) + 1)
    # the largest set (a prefix of the sorted PIPs) whose expected FDP is at most fdr
    n_called = int(np.flatnonzero(expected_fdp <= fdr).max() + 1) if (expected_fdp <= fdr).any() else 0
    calls = long.iloc[:n_called].reset_index(drop=True)
    calls.attrs["threshold"] = float(calls["pip"].min()) if n_called else float("nan")
    calls.attrs["expected_fdp"] = float(expected_fdp[n_called - 1]) if n_called else 0.0
    return calls
