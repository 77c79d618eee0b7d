"""Choosing n_latent and the sparsity: latent activity, agreement of calls, the selection table."""

import warnings

import numpy as np
import pandas as pd
import pytest

from pyro_svae import selection

from .conftest import FAST, make_screen


class _Fake:
    """A fitted model as far as latent_activity reads it."""

    def __init__(self, pips, latent):
        self._pips, self._latent = pips, latent

    def intervention_targets(self, num_samples=100):
        return pd.DataFrame(self._pips)

    def get_latent(self, adata=None):
        return self._latent


def test_latent_activity_flags_latents_without_target_or_variance():
    rng = np.random.default_rng(0)
    latent = np.c_[rng.normal(size=500), rng.normal(0, 0.01, size=500), rng.normal(0, 0.01, size=500)]
    pips = np.array([[0.9, 0.0, 0.7], [0.1, 0.2, 0.0]])
    table = selection.latent_activity(_Fake(pips, latent))
    assert list(table["targets"]) == [1, 0, 1]
    assert list(table["active"]) == [True, False, True]  # latent 1: no target, no variance
    assert table.loc[0, "variance"] == pytest.approx(1.0, abs=0.15)
    # latents computed beforehand are used as they are (fit passes the ones it already has)
    given = selection.latent_activity(_Fake(pips, None), latent=latent)
    pd.testing.assert_frame_equal(given, table)
    with pytest.raises(ValueError, match=r"latent must have shape \(n_cells, 3\)"):
        selection.latent_activity(_Fake(pips, None), latent=latent[:, :2])


def test_call_agreement_of_a_model_with_itself_is_one(fitted):
    model, adata = fitted
    assert selection.call_agreement(model, model, adata) == 1.0


def test_split_by_label_holds_out_a_share_of_every_label():
    adata = make_screen()
    train, test = selection.split_by_label(adata, "perturbation", 0.25)
    assert train.n_obs + test.n_obs == adata.n_obs
    shares = test.obs["perturbation"].value_counts() / adata.obs["perturbation"].value_counts()
    assert np.allclose(shares, 0.25, atol=0.02)
    with pytest.raises(KeyError, match="perturbation_key='guide'"):
        selection.split_by_label(adata, "guide")


def test_select_model_scores_each_setting_and_recommends_one():
    adata = make_screen(seed=2)
    options = {k: v for k, v in FAST.items() if k not in ("n_latent", "progress")}
    table = selection.select_model(adata, n_latent=(2, 3), min_shift=(0.5,), iw_samples=3, **options)
    assert list(table["n_latent"]) == [2, 3] and table["recommended"].sum() == 1
    assert np.isfinite(table["heldout_iwelbo"]).all() and table["agreement"].between(0, 1).all()
    assert (table["active_latents"] <= table["n_latent"]).all()
    with pytest.raises(ValueError, match="two seeds"):
        selection.select_model(adata, seeds=(0,), **options)


def test_recommend_relaxes_agreement_before_activity():
    table = pd.DataFrame({"n_latent": [6, 8, 12], "heldout_iwelbo": [-185.4, -185.2, -185.1],
                          "agreement": [0.9, 0.6, 0.6], "active_latents": [6, 8, 9]})
    marked = selection.recommend(table)  # 6 is the only one that qualifies on both
    assert list(marked["recommended"]) == [True, False, False] and not marked.attrs["at_largest"]
    assert marked.attrs["criterion"] == "all latents active, seeds agree"
    marked = selection.recommend(table.assign(agreement=0.5))  # none agree: the best fully active one
    assert list(marked["recommended"]) == [False, True, False] and "no setting" in marked.attrs["criterion"]
    with pytest.warns(UserWarning, match="n_latent=12 is the largest of the sweep"):
        marked = selection.recommend(table.assign(active_latents=[5, 7, 9], agreement=0.5))
    assert list(marked["recommended"]) == [False, False, True] and "IWELBO" in marked.attrs["criterion"]
    assert marked.attrs["at_largest"]
    assert list(table.columns) == ["n_latent", "heldout_iwelbo", "agreement", "active_latents"]  # input untouched


def test_recommend_says_when_the_largest_n_latent_is_best_but_not_when_it_is_chosen_with_a_worse_iwelbo():
    table = pd.DataFrame({"n_latent": [6, 8, 12], "heldout_iwelbo": [-185.4, -185.0, -185.1],
                          "agreement": [0.5, 0.5, 0.9], "active_latents": [6, 8, 12]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 12 is chosen for its agreement, but 8 predicts better: no warning
        marked = selection.recommend(table)
    assert list(marked["recommended"]) == [False, False, True] and not marked.attrs["at_largest"]
    with pytest.warns(UserWarning, match="extend n_latent"):
        marked = selection.recommend(table.assign(heldout_iwelbo=[-185.4, -185.2, -185.1]))
    assert marked.attrs["at_largest"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one n_latent, several min_shift: no sweep over n_latent to extend
        single = selection.recommend(table.assign(n_latent=8, agreement=0.9, active_latents=8))
    assert not single.attrs["at_largest"]
