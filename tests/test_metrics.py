"""Recovery metrics: known answers on constructed latents and targets."""

import numpy as np
import pytest

from pyro_svae import metrics


def test_mcc_is_one_under_permutation_sign_and_scale():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(500, 4))
    learned = -3.0 * true[:, [2, 0, 3, 1]] + 1.0
    assert metrics.mcc(learned, true) == pytest.approx(1.0)
    assert metrics.mcc(np.exp(learned / 3), true, method="spearman") == pytest.approx(1.0)
    assert metrics.r2(learned, true) == pytest.approx(1.0)
    matching = metrics.match_latents(learned, true)
    assert dict(zip(matching.learned_index, matching.true_index)) == {0: 2, 1: 0, 2: 3, 3: 1}


def test_mcc_of_independent_noise_is_small():
    rng = np.random.default_rng(1)
    assert metrics.mcc(rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3))) < 0.1


def test_target_scores_after_matching():
    true = np.array([[1, 0, 0], [0, 1, 1]], bool)
    matching = metrics.Matching(np.array([0, 1, 2]), np.array([2, 0, 1]), np.ones(3))
    pip = np.zeros((2, 3))
    pip[0, 1] = 0.9  # learned 1 is true 0
    pip[1, 0] = 0.8  # learned 0 is true 2
    pip[1, 2] = 0.7  # learned 2 is true 1
    assert metrics.target_scores(pip, true, matching) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    pip[0, 0] = 0.6  # a false positive
    scores = metrics.target_scores(pip, true, matching)
    assert scores["precision"] == 0.75 and scores["recall"] == 1.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same number of cells"):
        metrics.mcc(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="pearson"):
        metrics.mcc(np.zeros((3, 2)), np.zeros((3, 2)), method="kendall")


def test_align_to_truth_keeps_values_and_puts_unmatched_latents_last():
    matching = metrics.Matching(true_index=np.array([0, 1]), learned_index=np.array([2, 0]),
                                correlations=np.array([0.9, 0.8]))
    pips = np.array([[0.1, 0.2, 0.9], [0.7, 0.4, 0.0]])
    aligned = metrics.align_to_truth(pips, matching, n_true=3)  # true latent 2 matched to none
    assert aligned.dtype == pips.dtype and aligned.shape == (2, 4)
    assert np.array_equal(aligned, [[0.9, 0.1, 0.0, 0.2], [0.0, 0.7, 0.0, 0.4]])
    assert np.array_equal(metrics.aligned_calls(pips > 0.5, matching, 3), aligned > 0.5)
