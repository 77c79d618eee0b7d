"""How good are the predictions: a model's predicted expression changes for held-out perturbations,
scored as the perturbation-prediction field scores them, with the simple baselines beside it.

The metrics follow cell-eval (Arc Institute's Virtual Cell Challenge evaluator, repository
``ArcInstitute/cell-eval``, version 0.8.2): ``pearson_delta``, ``mse_delta`` / ``mae_delta``
(here :func:`mse`, :func:`mae`: on the change against control) and ``discrimination_score_l1``
from ``src/cell_eval/metrics/_anndata.py``; ``overlap_at_N`` from ``src/cell_eval/_types/_de.py``
(``DEComparison.compute_overlap``) with the differential expression of ``pdex`` that
``src/cell_eval/_evaluator.py`` runs; ``pearson_delta_degs`` (here ``pearson_delta_de``) from
the same ``_anndata.py`` on the repository's ``state_revision2`` branch. Expression is the pseudo-bulk
of log-normalised counts (:mod:`pyro_svae.baselines`). Only numpy, scipy and pandas are used;
``tests/test_evaluation.py`` checks the numbers against the ``cell-eval`` package when installed.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import cdist

from .baselines import (TARGET_SUM, additive, changes, k_cell_mean, linear, log_normalise, members, no_change,
                        pseudobulk, read_counts, split_half, stack_rows, training_mean)

__all__ = ["METRICS", "FDR", "pearson_delta", "mse", "mae", "discrimination_score", "log2_fold_change", "de_genes",
           "rank_by_fold_change", "overlap_at_n", "evaluate"]

logger = logging.getLogger(__name__)

#: The metrics :func:`evaluate` computes by default (``iwelbo``: the model's held-out IWELBO per cell).
METRICS = ("pearson_delta", "pearson_delta_de", "mse", "mae", "discrimination_score", "overlap_at_N", "iwelbo")
#: Genes with a Benjamini-Hochberg adjusted p-value below this are differentially expressed.
FDR = 0.05
_DISTANCES = {"l1": "cityblock", "l2": "euclidean", "cosine": "cosine"}


def pearson_delta(predicted, observed, genes=None) -> float:
    """Pearson correlation of a predicted and an observed change against control (``[n_genes]`` each),
    over all genes or the gene positions ``genes``; NaN with fewer than 2 genes or a constant input."""
    x, y = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"Expected predicted and observed of the same shape, but got {x.shape} and {y.shape}.")
    if genes is not None:
        x, y = x[np.asarray(genes, int)], y[np.asarray(genes, int)]
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if len(x) >= 2 and denominator > 0 else float("nan")


def mse(predicted, observed) -> float:
    """Mean squared error of a predicted against an observed change (``[n_genes]`` each): cell-eval's ``mse_delta``."""
    return float(np.mean((np.asarray(predicted, np.float64) - np.asarray(observed, np.float64)) ** 2))


def mae(predicted, observed) -> float:
    """Mean absolute error of a predicted against an observed change: cell-eval's ``mae_delta``."""
    return float(np.mean(np.abs(np.asarray(predicted, np.float64) - np.asarray(observed, np.float64))))


def discrimination_score(predicted, observed, true_index=None, exclude=None, metric: str = "l1") -> np.ndarray:
    """How well each prediction picks out its own observed profile, as cell-eval's ``discrimination_score``.

    The distances from prediction ``i`` to every observed change are sorted (ascending, ties in
    row order); with ``rank`` the position of its own profile (0 = the closest), the score is
    ``1 - rank / n_observed``: 1 is perfect, ``1 / n_observed`` the worst.

    Parameters
    ----------
    predicted : array
        ``[n_predicted, n_genes]`` predicted changes.
    observed : array
        ``[n_observed, n_genes]`` observed changes of all held-out perturbations.
    true_index : array of int, optional
        ``[n_predicted]`` the row of ``observed`` each prediction is of (default: the same row).
    exclude : array of bool, optional
        ``[n_predicted, n_genes]`` genes left out of prediction ``i``'s distances (cell-eval
        leaves out the perturbation's own target gene).
    metric : {"l1", "l2", "cosine"}

    Returns
    -------
    numpy.ndarray
        ``[n_predicted]`` scores in ``(0, 1]``.
    """
    predicted, observed = np.atleast_2d(np.asarray(predicted, np.float64)), np.atleast_2d(np.asarray(observed, np.float64))
    if metric not in _DISTANCES:
        raise ValueError(f"Expected metric in {sorted(_DISTANCES)}, but got {metric!r}.")
    true_index = np.arange(len(predicted)) if true_index is None else np.asarray(true_index, int)
    exclude = np.zeros(predicted.shape, bool) if exclude is None else np.asarray(exclude, bool)
    scores = np.empty(len(predicted))
    for i in range(len(predicted)):
        keep = ~exclude[i]
        distances = cdist(observed[:, keep], predicted[i:i + 1, keep], metric=_DISTANCES[metric]).ravel()
        rank = np.flatnonzero(np.argsort(distances, kind="stable") == true_index[i])[0]
        scores[i] = 1.0 - rank / len(observed)
    return scores


def log2_fold_change(perturbed_mean, control_mean) -> np.ndarray:
    """``log2`` ratio of geometric means, ``expm1`` of the mean log-normalised expression
    (``[n_genes]`` each), as ``pdex`` (``geometric_mean=True``, ``epsilon=0``, cell-eval's
    settings): ``0 / 0`` gives 0, a one-sided zero ``+-inf``. Negative means count as 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc = np.log2(np.expm1(np.maximum(perturbed_mean, 0.0)) / np.expm1(np.maximum(control_mean, 0.0)))
    return np.where(np.isnan(lfc), 0.0, lfc)


def rank_by_fold_change(perturbed_mean, control_mean) -> np.ndarray:
    """Gene positions by decreasing ``|log2 fold change|`` (ties in gene order; float32 as cell-eval's tables)."""
    return np.argsort(-np.abs(log2_fold_change(perturbed_mean, control_mean)).astype(np.float32), kind="stable")


def de_genes(perturbed, control, fdr: float = FDR) -> np.ndarray:
    """Differentially expressed genes of log-normalised cells, ranked as cell-eval ranks them.

    Per gene a two-sided Mann-Whitney U test of ``perturbed [n1, n_genes]`` against ``control
    [n0, n_genes]`` (normal approximation with continuity correction, as ``numba-mwu`` in
    ``pdex``), Benjamini-Hochberg over the genes; genes with an adjusted p-value below ``fdr``,
    by decreasing ``|log2 fold change|`` (:func:`rank_by_fold_change`). A gene constant in both
    groups has p = 1. Returns the gene positions ``[n_significant]``.
    """
    perturbed, control = np.asarray(perturbed, np.float64), np.asarray(control, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = stats.mannwhitneyu(perturbed, control, axis=0, method="asymptotic", use_continuity=True).pvalue
    p = np.where(np.isfinite(p), np.clip(p, 0.0, 1.0), 1.0)
    significant = stats.false_discovery_control(p).astype(np.float32) < fdr
    order = rank_by_fold_change(perturbed.mean(axis=0), control.mean(axis=0))
    return order[significant[order]]


def overlap_at_n(predicted_genes, observed_genes, n: Optional[int] = None) -> float:
    """cell-eval's ``overlap_at_N``: with ``k = min(n, len(observed_genes))`` (``n=None``: all
    observed DE genes), the share of the first ``k`` observed genes among the first ``k``
    predicted genes (both ranked lists of gene names or positions). NaN when ``k`` is 0 (cell-eval
    reports 0 there)."""
    k = len(observed_genes) if n is None else min(int(n), len(observed_genes))
    if k == 0:
        return float("nan")
    return len(np.intersect1d(np.asarray(predicted_genes)[:k], np.asarray(observed_genes)[:k])) / k


class _Observed(NamedTuple):
    changes: pd.DataFrame  # [P, G]
    control_mean: np.ndarray  # [G] mean log-normalised expression of the reference controls
    de: dict  # label -> gene positions of its DE genes, ranked


def _observe(counts, labels, control, genes, target_sum, fdr) -> _Observed:
    reference = log_normalise(counts[labels == control], target_sum)
    rows, de = {}, {}
    for label in sorted(set(labels) - {control}):
        cells = log_normalise(counts[labels == label], target_sum)
        rows[label], de[label] = cells.mean(axis=0) - reference.mean(axis=0), de_genes(cells, reference, fdr)
    return _Observed(pd.DataFrame.from_dict(rows, orient="index", columns=genes), reference.mean(axis=0), de)


def _score(method, predicted, control_mean, observed, metrics, top_n, distance, separator) -> list:
    labels = [p for p in predicted.index if p in observed.changes.index]
    if not labels:
        return []
    q = predicted.loc[labels].to_numpy(np.float64)
    every = list(observed.changes.index)
    genes = observed.changes.columns.astype(str)
    scores = discrimination_score(q, observed.changes.to_numpy(), [every.index(p) for p in labels],
                                  np.array([genes.isin(members(p, separator)) for p in labels]), distance)
    rows = []
    for i, p in enumerate(labels):
        obs, de = observed.changes.loc[p].to_numpy(), observed.de[p]
        top = de if top_n is None else de[:top_n]
        values = {"pearson_delta": lambda: pearson_delta(q[i], obs),
                  "pearson_delta_de": lambda: pearson_delta(q[i], obs, top),
                  "mse": lambda: mse(q[i], obs), "mae": lambda: mae(q[i], obs),
                  "discrimination_score": lambda: scores[i],
                  "overlap_at_N": lambda: overlap_at_n(rank_by_fold_change(control_mean + q[i], control_mean), de, top_n)}
        rows += [(p, method, m, float(values[m]())) for m in metrics if m in values]
    return rows


def evaluate(model, adata_test, adata_train, seen=None, metrics: Sequence[str] = METRICS, n_cells: int = 500,
             seed: int = 0, *, top_n: Optional[int] = None, fdr: float = FDR, n_samples: int = 100,
             distance: str = "l1", layer: Optional[str] = None, perturbation_key: Optional[str] = None,
             control: Optional[str] = None, target_sum: float = TARGET_SUM) -> pd.DataFrame:
    """Score a model's predictions of held-out perturbations, with every applicable baseline beside it.

    Each perturbation of ``adata_test`` (its labels but the control) is held out. Its observed
    change is the pseudo-bulk of its cells minus that of the reference controls (the control
    cells of ``adata_test``, or of ``adata_train`` when it has none). The model's predicted change
    is its predicted cells' pseudo-bulk (``model.predict``, ``n_cells`` per label, library sizes
    drawn from ``adata_train``) minus that of its own predicted control cells. The baselines
    (:mod:`pyro_svae.baselines`): ``control`` (no change), ``training_mean`` (changes measured
    against ``adata_train``'s controls), ``k_cell_mean`` (with ``seen``: the cells a model was
    transferred on), ``additive`` (combinations of known members), ``linear`` (perturbations named
    like a gene), ``split_half`` (the ceiling: half of the held-out cells scored against the other
    half). The predicted DE genes of ``overlap_at_N`` are all genes ranked by ``|log2 fold
    change|``: baselines have no cells to test, so no prediction is filtered by significance.

    Parameters
    ----------
    model : SVAE or None
        A fitted model that knows every held-out perturbation (``transfer`` it first for unseen
        ones); ``None`` scores the baselines only.
    adata_test, adata_train : anndata.AnnData
        Raw counts of the held-out cells and of the training cells (with controls); never modified.
    seen : anndata.AnnData, optional
        The few cells seen of held-out perturbations (few-shot).
    metrics : sequence of str
        Names in :data:`METRICS`. ``pearson_delta_de`` and ``overlap_at_N`` use the first
        ``top_n`` observed DE genes (``None``: all with an adjusted p-value below ``fdr``).
    n_samples : int
        Importance samples of the held-out IWELBO (``model.marginal_log_likelihood``).
    distance : {"l1", "l2", "cosine"}
        Of ``discrimination_score`` (the perturbation's own gene left out).
    layer, perturbation_key, control :
        Default: the model's configuration (``"perturbation"``, ``"control"`` without a model).

    Returns
    -------
    pandas.DataFrame
        Tidy: ``perturbation``, ``method`` (``"model"`` and the baselines), ``metric``, ``value``;
        one row per held-out perturbation, method that applies to it and metric.
        ``attrs["n_de_genes"]``: the observed DE genes of each held-out perturbation.
    """
    config = getattr(model, "config", None)
    key = perturbation_key or (config.perturbation_key if config is not None else "perturbation")
    control = control if control is not None else (config.control if config is not None else "control")
    separator = config.separator if config is not None else "+"
    layer = layer if layer is not None else getattr(config, "layer", None)
    if control is None:
        raise ValueError("Expected a control label (the model's config.control), but got None: changes are "
                         "measured against control cells.")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"Expected metrics among {list(METRICS)}, but got {unknown}.")
    genes = [str(g) for g in (model.gene_names if model is not None else adata_test.var_names)]
    test_counts, test_labels = read_counts(adata_test, "adata_test", key, layer, genes)
    train_counts, train_labels = read_counts(adata_train, "adata_train", key, layer, genes)
    if not (train_labels == control).any():
        raise ValueError(f"Expected control cells (obs[{key!r}] == {control!r}) in adata_train, but got labels "
                         f"{sorted(set(train_labels))[:10]}.")
    held_out = sorted(set(test_labels) - {control})
    if not held_out:
        raise ValueError(f"Expected perturbed cells in adata_test.obs[{key!r}], but got only {control!r}.")
    if model is not None:
        known = set(model.perturbation_names)
        for label in held_out:
            if not set(members(label, separator)) <= known:
                raise ValueError(f"adata_test.obs[{key!r}] holds {label!r}, which the model does not know; expected "
                                 f"labels made of {sorted(known)[:10]}... (transfer the model to unseen perturbations).")
    is_control = test_labels == control
    reference = test_counts[is_control] if is_control.any() else train_counts[train_labels == control]
    held = ~is_control
    obs_counts = stack_rows(test_counts[held], reference)
    obs_labels = np.concatenate([test_labels[held], np.full(reference.shape[0], control, dtype=object)]).astype(str)
    observed = _observe(obs_counts, obs_labels, control, genes, target_sum, fdr)

    train_bulk = pseudobulk(train_counts, train_labels, genes, target_sum)
    train_changes = changes(train_bulk, control)
    known_changes, seen_changes = train_changes, None
    if seen is not None:
        seen_counts, seen_labels = read_counts(seen, "seen", key, layer, genes)
        perturbed = seen_labels != control
        seen_changes = pseudobulk(seen_counts[perturbed], seen_labels[perturbed], genes, target_sum) - train_bulk.loc[control]
        known_changes = pd.concat([train_changes, seen_changes.drop(index=train_changes.index, errors="ignore")])
    ref_mean = observed.control_mean
    predictions = {}
    if model is not None:
        library = np.asarray(train_counts.sum(axis=1)).ravel()
        simulated = model.predict([control] + held_out, n_cells=n_cells, library=library[library > 0], seed=seed)
        bulk = pseudobulk(simulated.X, simulated.obs[key].astype(str).to_numpy(), genes, target_sum)
        predictions["model"] = (changes(bulk, control), bulk.loc[control].to_numpy())
    predictions["control"] = (no_change(held_out, genes), ref_mean)
    predictions["training_mean"] = (training_mean(train_changes, held_out), ref_mean)
    if seen_changes is not None:
        predictions["k_cell_mean"] = (k_cell_mean(seen_changes, held_out), ref_mean)
    predictions["additive"] = (additive(known_changes, held_out, separator), ref_mean)
    predictions["linear"] = (linear(train_changes, held_out), ref_mean)
    rows = []
    for method, (predicted, control_mean) in predictions.items():
        rows += _score(method, predicted, control_mean, observed, metrics, top_n, distance, separator)
    half, second = split_half(obs_counts, obs_labels, control, genes, seed, target_sum)
    observed_half = _observe(obs_counts[second], obs_labels[second], control, genes, target_sum, fdr)
    rows += _score("split_half", half, observed_half.control_mean, observed_half, metrics, top_n, distance, separator)
    if model is not None and "iwelbo" in metrics:
        cells = adata_test[~is_control][:, genes]
        iwelbo = model.marginal_log_likelihood(cells, n_samples=n_samples, by=key, seed=seed)
        rows += [(p, "model", "iwelbo", float(iwelbo[p])) for p in held_out]
    table = pd.DataFrame(rows, columns=["perturbation", "method", "metric", "value"])
    table.attrs["n_de_genes"] = {p: int(len(observed.de[p])) for p in held_out}
    logger.info("Scored %d held-out perturbations: %s.", len(held_out), ", ".join(table["method"].unique()))
    return table
