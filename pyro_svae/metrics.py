"""Recovery metrics against a known truth: latent MCC, R^2, target precision/recall/F1.

Learned latents are identifiable only up to permutation and sign (and an elementwise map), so
every metric first matches learned to true dimensions with the Hungarian algorithm
(:func:`scipy.optimize.linear_sum_assignment`) on absolute correlations.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

__all__ = ["Matching", "match_latents", "mcc", "r2", "target_scores", "align_to_truth", "aligned_calls", "false_discovery", "jaccard",
           "true_targets_of", "recovery"]


class Matching(NamedTuple):
    """``true_index[j]`` is the true dimension matched to learned dimension ``learned_index[j]``."""

    learned_index: np.ndarray
    true_index: np.ndarray
    correlations: np.ndarray  # [n_matched] |corr| of each matched pair


def _abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = (a - a.mean(0)) / (a.std(0) + 1e-12)
    b = (b - b.mean(0)) / (b.std(0) + 1e-12)
    return np.abs(a.T @ b) / len(a)  # [n_learned, n_true]


def match_latents(learned: np.ndarray, true: np.ndarray, method: str = "pearson") -> Matching:
    """Match learned ``[n_cells, K1]`` to true ``[n_cells, K2]`` latents by |correlation|."""
    learned, true = np.asarray(learned, float), np.asarray(true, float)
    if learned.shape[0] != true.shape[0]:
        raise ValueError(f"Expected the same number of cells, but got {learned.shape[0]} and {true.shape[0]}.")
    if method == "spearman":
        learned, true = rankdata(learned, axis=0), rankdata(true, axis=0)
    elif method != "pearson":
        raise ValueError(f"Expected method 'pearson' or 'spearman', but got {method!r}.")
    corr = _abs_corr(learned, true)
    rows, cols = linear_sum_assignment(-corr)
    return Matching(rows, cols, corr[rows, cols])


def mcc(learned: np.ndarray, true: np.ndarray, method: str = "pearson") -> float:
    """Mean correlation coefficient after matching: 1 means recovery up to permutation and sign."""
    return float(match_latents(learned, true, method).correlations.mean())


def r2(learned: np.ndarray, true: np.ndarray) -> float:
    """Mean R^2 of each true latent regressed (affinely) on its matched learned latent."""
    return float((match_latents(learned, true).correlations ** 2).mean())


def target_scores(pip: np.ndarray, true_targets: np.ndarray, matching: Matching, threshold: float = 0.5) -> dict:
    """Precision, recall and F1 of called targets (``pip > threshold``) against the truth.

    ``pip`` is ``[n_perturbations, K_learned]``, ``true_targets`` ``[n_perturbations, K_true]``; the
    learned columns are put in the order of the true ones by ``matching``. Learned dimensions
    matched to no true one count as false positives.
    """
    pip, true_targets = np.asarray(pip), np.asarray(true_targets, bool)
    if pip.shape[0] != true_targets.shape[0]:
        raise ValueError(f"Expected the same perturbations, but got {pip.shape[0]} and {true_targets.shape[0]} rows.")
    called = pip > threshold
    aligned = np.zeros_like(true_targets)
    aligned[:, matching.true_index] = called[:, matching.learned_index]
    unmatched = np.setdiff1d(np.arange(pip.shape[1]), matching.learned_index)
    extra = int(called[:, unmatched].sum())
    tp = int((aligned & true_targets).sum())
    fp = int((aligned & ~true_targets).sum()) + extra
    fn = int((~aligned & true_targets).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def align_to_truth(values: np.ndarray, matching: Matching, n_true: int) -> np.ndarray:
    """Per-entry values ``[P, K_learned]`` (calls, PIPs, shifts) in the true latents' coordinates:
    ``[P, n_true + n_unmatched]``, same dtype.

    Column ``k < n_true`` holds the values of the learned latent matched to true latent ``k`` (zero
    where none is); the columns of learned latents matched to none follow, so that their calls
    count as false positives.
    """
    values = np.asarray(values)
    unmatched = np.setdiff1d(np.arange(values.shape[1]), matching.learned_index)
    aligned = np.zeros((values.shape[0], n_true + len(unmatched)), dtype=values.dtype)
    aligned[:, matching.true_index] = values[:, matching.learned_index]
    aligned[:, n_true:] = values[:, unmatched]
    return aligned


def aligned_calls(called: np.ndarray, matching: Matching, n_true: int) -> np.ndarray:
    """Calls ``[P, K_learned]`` (cast to bool) in the true latents' coordinates,
    ``[P, n_true + n_unmatched]`` (:func:`align_to_truth`)."""
    return align_to_truth(np.asarray(called, bool), matching, n_true)


def false_discovery(called: np.ndarray, true_targets: np.ndarray, matching: Matching) -> dict:
    """Realised false discovery proportion and recall of a set of calls ``[P, K_learned]`` (bool).

    ``fdp`` is 0 when nothing is called. Learned latents matched to no true one count as false.
    """
    true_targets = np.asarray(true_targets, bool)
    aligned = aligned_calls(called, matching, true_targets.shape[1])
    truth = np.zeros_like(aligned)
    truth[:, :true_targets.shape[1]] = true_targets
    n_called = int(aligned.sum())
    tp = int((aligned & truth).sum())
    return {"fdp": (n_called - tp) / n_called if n_called else 0.0, "recall": tp / max(1, int(truth.sum())),
            "n_called": n_called}


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard index of two boolean call tables of the same shape (1 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"Expected call tables of the same shape, but got {a.shape} and {b.shape}.")
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def true_targets_of(model, adata, matching: Matching) -> np.ndarray:
    """The simulator's true targets ``[P, K_learned]`` in the model's perturbation and latent order.

    Reads ``adata.uns["true_targets"]`` (rows in ``adata.uns["perturbation_names"]``); learned
    latents matched to no true one have no true target. For plots: ``pl.targets(model, truth=...)``.
    """
    names = list(adata.uns["perturbation_names"])
    truth = np.asarray(adata.uns["true_targets"], bool)[[names.index(p) for p in model.perturbation_names]]
    aligned = np.zeros((truth.shape[0], model.config.n_latent), dtype=bool)
    aligned[:, matching.learned_index] = truth[:, matching.true_index]
    return aligned


def recovery(model, adata) -> dict:
    """Latent MCC (Pearson, Spearman), R^2 and target precision/recall/F1 against a simulated truth.

    ``adata`` is a screen of :func:`pyro_svae.datasets.simulate` (``obsm["z_true"]``,
    ``uns["true_targets"]``); targets are called at PIP > 0.5.
    """
    latent, truth = model.get_latent(adata), adata.obsm["z_true"]
    matching = match_latents(latent, truth)
    names = list(adata.uns["perturbation_names"])
    rows = [names.index(p) for p in model.perturbation_names]
    scores = target_scores(model.intervention_targets().to_numpy(), np.asarray(adata.uns["true_targets"])[rows],
                           matching)
    return {"mcc": float(matching.correlations.mean()), "mcc_spearman": mcc(latent, truth, "spearman"),
            "r2": float((matching.correlations ** 2).mean()), **{f"target_{k}": v for k, v in scores.items()}}
