"""Choosing ``n_latent`` and the sparsity on real data, and finding latents that carry nothing.

A latent that no perturbation targets and along which the cells do not vary is a silent column:
:func:`latent_activity` reports it. :func:`select_model` fits each candidate setting with two seeds
on most of each label's cells and scores it on the rest: held-out IWELBO (how well it predicts new
cells), agreement of the two seeds' target calls (are the targets a property of the data or of
the seed?) and how many latents are active. It recommends the setting with the best held-out
IWELBO among those whose latents are all active and whose calls agree (Jaccard >= ``min_agreement``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

from . import metrics
from .api import fit
from .results import latent_activity

__all__ = ["latent_activity", "call_agreement", "split_by_label", "select_model", "recommend"]

logger = logging.getLogger(__name__)


def call_agreement(model_a, model_b, adata, threshold: float = 0.5) -> float:
    """Jaccard index of two fits' target calls (PIP > ``threshold``), their latents matched by the
    correlation of the cells' posterior means (Hungarian): 1 when both call the same targets."""
    latent_a, latent_b = model_a.get_latent(adata), model_b.get_latent(adata)
    matching = metrics.match_latents(latent_b, latent_a)
    calls_a = model_a.intervention_targets().to_numpy() > threshold
    calls_b = metrics.aligned_calls(model_b.intervention_targets().to_numpy() > threshold, matching, latent_a.shape[1])
    width = max(calls_a.shape[1], calls_b.shape[1])
    pad = (lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1]))))  # noqa: E731
    return metrics.jaccard(pad(calls_a), pad(calls_b))


def split_by_label(adata, key: str, test_fraction: float = 0.2, seed: int = 0):
    """``(train, test)`` AnnData copies: ``test_fraction`` of every label's cells held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Expected test_fraction in (0, 1), but got {test_fraction!r}.")
    if key not in adata.obs.columns:
        raise KeyError(f"perturbation_key={key!r} is not a column of adata.obs; available: {list(adata.obs.columns)}.")
    rng = np.random.default_rng(seed)
    labels = adata.obs[key].astype(str).to_numpy()
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        test[cells[:int(round(test_fraction * len(cells)))]] = True
    return adata[~test].copy(), adata[test].copy()


def select_model(adata, n_latent: Sequence[int] = (6, 8, 10, 12), min_shift: Sequence = ("auto",),
                 seeds: Sequence[int] = (0, 1), test_fraction: float = 0.2, iw_samples: int = 50,
                 min_agreement: float = 0.8, **fit_options) -> pd.DataFrame:
    """Fit every ``(n_latent, min_shift)`` with each seed and score it (see the module docstring).

    ``fit_options`` go to :func:`pyro_svae.fit` (``perturbation_key``, ``control``, ``batch_key``,
    ``max_epochs``...). Returns one row per setting: ``n_latent``, ``min_shift``, ``heldout_iwelbo``
    (mean over seeds, per test cell), ``agreement`` (Jaccard of the seeds' calls), ``active_latents``
    (the fewest over seeds), ``calls`` (mean number of targets) and ``recommended`` (one row).
    """
    if len(seeds) < 2:
        raise ValueError(f"Expected at least two seeds (the agreement of their calls is a criterion), got {seeds}.")
    key = fit_options.get("perturbation_key", "perturbation")
    train, test = split_by_label(adata, key, test_fraction, seed=seeds[0])
    rows = []
    for k in n_latent:
        for shift in min_shift:
            options = {**fit_options, "n_latent": int(k),
                       "prior_options": {**fit_options.get("prior_options", {}),
                                         "min_shift": shift if shift == "auto" else float(shift)}}
            models = [fit(train, seed=int(s), progress=False, **options) for s in seeds]
            rows.append({
                "n_latent": int(k), "min_shift": models[0].config.prior_options.get("min_shift", shift),
                "heldout_iwelbo": float(np.mean([m.marginal_log_likelihood(test, n_samples=iw_samples, seed=0)
                                                 for m in models])),
                "agreement": float(np.mean([call_agreement(models[0], m, train) for m in models[1:]])),
                "active_latents": int(min(latent_activity(m, train)["active"].sum() for m in models)),
                "calls": float(np.mean([(m.intervention_targets() > 0.5).to_numpy().sum() for m in models]))})
            logger.info("n_latent=%d, min_shift=%g: %s", k, shift, rows[-1])
    return recommend(pd.DataFrame(rows), min_agreement)


def recommend(table: pd.DataFrame, min_agreement: float = 0.8) -> pd.DataFrame:
    """Mark the recommended row of a :func:`select_model` table (``recommended``): the best held-out
    IWELBO among the settings whose latents are all active and whose seeds agree. If none qualify,
    the agreement is dropped first (a setting with silent latents is larger than the screen needs,
    whatever its IWELBO), then the activity. ``attrs["criterion"]`` says which pool was used.

    When the recommended setting is the sweep's largest ``n_latent`` and has the best held-out
    IWELBO of all rows, the sweep has not found where adding latents stops helping:
    ``attrs["at_largest"]`` is True and a ``UserWarning`` says to extend ``n_latent``."""
    table = table.reset_index(drop=True)
    all_active = table["active_latents"] == table["n_latent"]
    pools = [("all latents active, seeds agree", all_active & (table["agreement"] >= min_agreement)),
             ("all latents active (no setting's seeds agree)", all_active),
             ("none has all latents active: best held-out IWELBO", pd.Series(True, index=table.index))]
    criterion, keep = next((name, keep) for name, keep in pools if keep.any())
    marked = table.assign(recommended=table.index == table.loc[keep, "heldout_iwelbo"].idxmax())
    marked.attrs["criterion"] = criterion
    chosen = marked.loc[marked["recommended"]].iloc[0]
    marked.attrs["at_largest"] = bool(table["n_latent"].nunique() > 1 and chosen["n_latent"] == table["n_latent"].max()
                                      and chosen["heldout_iwelbo"] >= table["heldout_iwelbo"].max())
    if marked.attrs["at_largest"]:
        warnings.warn(f"The recommended n_latent={int(chosen['n_latent'])} is the largest of the sweep and has its "
                      "best held-out IWELBO: a larger n_latent may describe the screen better; extend n_latent.",
                      UserWarning, stacklevel=2)
    return marked
