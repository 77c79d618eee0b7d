"""The tables a user reads off a fit: inclusion probabilities, shifts, target calls at a Bayesian
FDR, and their form in ``adata.uns`` (plain arrays and strings, so they survive h5ad)."""

from __future__ import annotations

import json
from typing import Optional

import numpy as np
import pandas as pd

__all__ = ["SHIFT_THRESHOLD", "inclusion_table", "shift_table", "call_targets", "by_group", "latent_activity",
           "to_uns", "from_uns"]

#: For priors without a mask, a latent counts as a target when ``|shift| > SHIFT_THRESHOLD``
#: (in units of the prior's unit standard deviation of ``z``).
SHIFT_THRESHOLD = 0.5


def _frame(values: np.ndarray, layout, n_latent: int) -> pd.DataFrame:
    return pd.DataFrame(np.asarray(values, dtype=np.float64),
                        index=pd.Index(list(layout.perturbations), name="perturbation"),
                        columns=pd.RangeIndex(n_latent, name="latent"))


def inclusion_table(draws, layout, n_latent: int) -> pd.DataFrame:
    """Posterior mean inclusion probability ``[P x K]`` of :class:`~pyro_svae.posterior.GlobalDraws`."""
    inclusion = draws.inclusion if draws.inclusion is not None else (draws.delta.abs() > SHIFT_THRESHOLD).float()
    return _frame(inclusion.mean(0).cpu().numpy(), layout, n_latent)


def shift_table(draws, layout, n_latent: int) -> pd.DataFrame:
    """Posterior mean effective shift ``[P x K]``."""
    return _frame(draws.delta.mean(0).cpu().numpy(), layout, n_latent)


def call_targets(pips: pd.DataFrame, fdr: float, min_pip: float = 0.5) -> pd.DataFrame:
    """The calls of :meth:`SVAE.target_calls` from a PIP table (perturbations x latents): of the
    entries with PIP > ``min_pip``, the largest set by decreasing PIP whose mean ``1 - PIP`` (the
    expected false discovery proportion, Newton et al. 2004) is at most ``fdr``.

    ``min_pip=0`` is the plain Bayesian FDR rule, which, when most PIPs are near 1, fills its
    budget with entries the model says are off (PIP near 0); ``min_pip=0.5`` keeps it inside the
    median probability model, and the expected FDP stays at most ``fdr`` either way.
    """
    if not 0.0 <= fdr < 1.0:
        raise ValueError(f"fdr must lie in [0, 1), but got {fdr}.")
    if not 0.0 <= min_pip < 1.0:
        raise ValueError(f"min_pip must lie in [0, 1), but got {min_pip}.")
    long = pips.stack().rename("pip").reset_index().sort_values("pip", ascending=False, kind="stable")
    long = long[long["pip"] > min_pip] if min_pip > 0 else long  # min_pip=0: every entry, PIP 0 included
    expected_fdp = np.cumsum(1.0 - long["pip"].to_numpy()) / np.arange(1, len(long) + 1)
    # the largest set (a prefix of the sorted PIPs) whose expected FDP is at most fdr
    n_called = int(np.flatnonzero(expected_fdp <= fdr).max() + 1) if (expected_fdp <= fdr).any() else 0
    calls = long.iloc[:n_called].reset_index(drop=True)
    calls.attrs["threshold"] = float(calls["pip"].min()) if n_called else float("nan")
    calls.attrs["expected_fdp"] = float(expected_fdp[n_called - 1]) if n_called else 0.0
    return calls


def by_group(values: np.ndarray, adata, by: Optional[str], name: str):
    """The mean of per-cell ``values`` ``[n_cells]``: overall (``by=None``, a float) or per group of
    ``adata.obs[by]`` (a ``pandas.Series`` called ``name``)."""
    if by is None:
        return float(values.mean())
    if by not in adata.obs.columns:
        raise KeyError(f"by={by!r} is not a column of adata.obs; available columns: {list(adata.obs.columns)}.")
    return pd.Series(values, index=adata.obs_names).groupby(adata.obs[by].astype(str).to_numpy()).mean().rename(name)


def latent_activity(model, adata=None, threshold: float = 0.5, min_variance: float = 0.05,
                    num_samples: int = 100, latent: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Per latent: how many perturbations target it and how much the cells vary along it.

    Returns a table indexed by latent with ``targets`` (perturbations with inclusion probability >
    ``threshold``), ``max_pip``, ``variance`` (of the cells' posterior means; the prior's is 1 plus
    the shifts') and ``active`` (a target, or a variance of at least ``min_variance``). An inactive
    latent is one the model does not use: a smaller ``n_latent`` describes the screen as well.
    ``latent`` ``[n_cells, n_latent]``: the cells' posterior means if already computed (``model.get_latent(adata)``).
    """
    pips = model.intervention_targets(num_samples=num_samples)
    latent = model.get_latent(adata) if latent is None else np.asarray(latent)
    if latent.ndim != 2 or latent.shape[1] != pips.shape[1]:
        raise ValueError(f"latent must have shape (n_cells, {pips.shape[1]}), but got {latent.shape}.")
    variance = latent.var(0)
    table = pd.DataFrame({"targets": (pips > threshold).sum(0).to_numpy(), "max_pip": pips.max(0).to_numpy(),
                          "variance": variance}, index=pd.RangeIndex(len(variance), name="latent"))
    table["active"] = (table["targets"] > 0) | (table["variance"] >= min_variance)
    return table


def to_uns(svae, num_samples: int = 200) -> dict:
    """The results of a fitted model as ``adata.uns`` holds them: arrays and strings only.

    ``perturbation_names`` ``[P]`` (str), ``inclusion_probabilities`` and ``shifts`` ``[P, K]``
    (float64), and ``params``: ``prior``, ``prior_options`` (JSON), ``likelihood``, ``n_latent``,
    ``perturbation_key``, ``control`` (``""`` for none). :func:`from_uns` rebuilds the tables.
    """
    draws = svae.global_draws(num_samples)
    c = svae.config
    return {
        "perturbation_names": np.asarray(svae.perturbation_names, dtype=str),
        "inclusion_probabilities": inclusion_table(draws, svae.layout, c.n_latent).to_numpy(),
        "shifts": shift_table(draws, svae.layout, c.n_latent).to_numpy(),
        "params": {"prior": c.prior, "prior_options": json.dumps(c.prior_options, default=str),
                   "likelihood": c.likelihood, "n_latent": int(c.n_latent), "perturbation_key": c.perturbation_key,
                   "control": "" if c.control is None else c.control},
    }


def from_uns(adata, uns_key: str = "svae") -> dict:
    """The tables written by :meth:`SVAE.write`, from ``adata.uns[uns_key]`` (also after an h5ad round trip).

    Returns
    -------
    dict
        ``inclusion_probabilities`` and ``shifts`` (DataFrames, perturbations x latents) and
        ``params`` (with ``prior_options`` a dict and ``control`` ``None`` when there was none).
    """
    if uns_key not in adata.uns:
        raise KeyError(f"adata.uns has no {uns_key!r}; expected the results of SVAE.write(adata, uns_key={uns_key!r}).")
    entry = adata.uns[uns_key]
    names = [str(n) for n in np.asarray(entry["perturbation_names"])]
    index = pd.Index(names, name="perturbation")

    def table(key):
        values = np.asarray(entry[key], dtype=np.float64)
        return pd.DataFrame(values, index=index, columns=pd.RangeIndex(values.shape[1], name="latent"))

    params = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in dict(entry["params"]).items()}
    params["prior_options"] = json.loads(str(params.get("prior_options", "{}")))
    params["control"] = params.get("control") or None
    return {"inclusion_probabilities": table("inclusion_probabilities"), "shifts": table("shifts"), "params": params}
