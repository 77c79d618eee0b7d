"""Messages a new user meets: they name the key, the expected and the actual, and suggest the fix."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pyro_svae
from pyro_svae import results

from .conftest import FAST, make_screen


def _relabel(adata, mapping):
    adata = adata.copy()
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace(mapping)
    return adata


def test_a_wrong_control_lists_the_frequent_labels_and_the_likely_controls():
    adata = _relabel(make_screen(), {"control": "non-targeting"})
    with pytest.raises(ValueError, match=r"control='control'.*'non-targeting' \(60\).*look like controls: "
                                         r"\['non-targeting'\]"):
        pyro_svae.fit(adata, **FAST)


def test_no_control_on_a_screen_with_a_control_label_warns():
    adata = make_screen()
    with pytest.warns(UserWarning, match="control=None, but .* 'control', which looks like a control"):
        pyro_svae.fit(adata, control=None, **FAST)


def test_loading_with_other_genes_fails_at_load(fitted, tmp_path):
    model, adata = fitted
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="lack 1 of the model's 30 training genes"):
        pyro_svae.load(tmp_path / "m", adata=adata[:, 1:].copy())
    extra = ad.AnnData(np.ones((adata.n_obs, adata.n_vars + 1), np.float32), obs=adata.obs,
                       var=pd.DataFrame(index=list(adata.var_names) + ["new"]))
    with pytest.raises(ValueError, match="1 genes the model was not fitted on"):
        pyro_svae.load(tmp_path / "m", adata=extra)


def test_unseen_labels_point_to_transfer(fitted):
    model, adata = fitted
    unseen = _relabel(adata, {"p0": "GENE_X"})
    with pytest.raises(ValueError, match="'GENE_X' is not one of the known perturbations.*SVAE.transfer"):
        model.get_latent(unseen)
    with pytest.raises(ValueError, match="use SVAE.transfer first"):
        model.predict(["GENE_X"])


def test_a_batch_larger_than_the_data_is_made_smaller_with_a_warning():
    adata = make_screen()
    with pytest.warns(UserWarning, match="batch_size=100000 is larger than the .* training cells; using"):
        model = pyro_svae.fit(adata, **{**FAST, "batch_size": 100000})
    assert model.train_config.batch_size < 100000


def test_results_survive_an_h5ad_round_trip(fitted, tmp_path):
    model, adata = fitted
    written = model.write(adata, copy=True)
    written.write_h5ad(tmp_path / "r.h5ad")
    back = results.from_uns(ad.read_h5ad(tmp_path / "r.h5ad"))
    assert isinstance(back["params"]["prior_options"], dict) and back["params"]["control"] == "control"
    assert list(back["inclusion_probabilities"].index) == list(model.perturbation_names)
    assert np.allclose(back["shifts"].to_numpy(), written.uns["svae"]["shifts"])
    with pytest.raises(KeyError, match="SVAE.write"):
        results.from_uns(adata)


def test_history_says_which_epoch_is_kept_and_warns_when_still_improving():
    adata = make_screen()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = pyro_svae.fit(adata, **{**FAST, "max_epochs": 15, "kl_warmup_epochs": 1, "patience": 100})
    history = model.history
    assert history["restored"].sum() == 1 and model.restored_epoch == int(history.loc[history["restored"], "epoch"].iloc[0])
    best = history["validation_elbo"].rolling(10, min_periods=1).mean()
    if model.restored_epoch == history["epoch"].max():
        assert any("still improving" in str(w.message) for w in caught)
    assert best.iloc[model.restored_epoch] == pytest.approx(best.iloc[1:].max())


def test_inclusion_probabilities_can_be_tracked(fitted):
    adata = make_screen()
    model = pyro_svae.fit(adata, track_targets=True, **FAST)
    trace = model.target_trace
    assert list(trace.columns) == ["epoch", "perturbation", "latent", "pip"]
    sparse = model.history.loc[model.history["stage"] == "sparse", "epoch"]  # after the dense warm start
    assert sorted(trace["epoch"].unique()) == list(sparse)
    assert len(trace) == len(sparse) * len(model.perturbation_names) * FAST["n_latent"]
