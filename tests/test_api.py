"""fit() and the fitted SVAE: outputs, determinism, persistence."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import pyro_svae

from .conftest import FAST, make_screen


def test_outputs_have_documented_shapes(fitted):
    model, adata = fitted
    n_pert = adata.obs["perturbation"].nunique() - 1
    latent = model.get_latent()
    assert latent.shape == (adata.n_obs, FAST["n_latent"]) and np.isfinite(latent).all()
    targets = model.intervention_targets()
    assert targets.shape == (n_pert, FAST["n_latent"])
    assert "control" not in targets.index and list(targets.index) == sorted(targets.index)
    assert ((targets >= 0) & (targets <= 1)).all().all()
    shifts = model.shifts()
    assert shifts.shape == targets.shape and list(shifts.index) == list(targets.index)
    assert list(model.history.columns[:3]) == ["epoch", "train_elbo", "validation_elbo"]
    assert len(model.history) == FAST["max_epochs"]


def test_elbo_overall_and_by_perturbation(fitted):
    model, adata = fitted
    overall = model.elbo()
    by = model.elbo(by="perturbation")
    assert np.isfinite(overall) and overall < 0
    assert isinstance(by, pd.Series) and set(by.index) == set(adata.obs["perturbation"].astype(str))
    with pytest.raises(KeyError, match="by='nope'"):
        model.elbo(by="nope")


def test_pip_of_prior_without_mask_thresholds_shifts():
    adata = make_screen()
    model = pyro_svae.fit(adata, prior="gaussian", **FAST)
    pip = model.intervention_targets(num_samples=50).to_numpy()
    assert ((pip >= 0) & (pip <= 1)).all()
    none = pyro_svae.fit(adata, prior="none", **FAST)
    assert (none.intervention_targets(num_samples=5).to_numpy() == 0).all()
    assert (none.shifts(num_samples=5).to_numpy() == 0).all()


def test_validation_fraction_zero_trains_on_all_cells():
    model = pyro_svae.fit(make_screen(), validation_fraction=0, **FAST)
    assert model.history["validation_elbo"].isna().all()
    assert not model.train_config.early_stopping


def test_same_seed_same_model():
    adata = make_screen()
    a = pyro_svae.fit(adata, seed=3, **FAST)
    b = pyro_svae.fit(adata, seed=3, **FAST)
    c = pyro_svae.fit(adata, seed=4, **FAST)
    assert np.array_equal(a.get_latent(), b.get_latent())
    pd.testing.assert_frame_equal(a.history, b.history)
    assert not np.array_equal(a.get_latent(), c.get_latent())


def test_restarts_keep_the_fit_with_the_highest_elbo(tmp_path):
    adata = make_screen()
    model = pyro_svae.fit(adata, seed=3, n_restarts=2, **FAST)
    table = model.restarts
    assert list(table["seed"]) == [3, 4] and table["chosen"].sum() == 1
    assert table.loc[table["chosen"], "elbo"].item() == table["elbo"].max()
    chosen = int(table.loc[table["chosen"], "seed"].item())
    alone = pyro_svae.fit(adata, seed=chosen, **FAST)  # the kept fit is that seed's fit, unchanged
    assert np.array_equal(model.get_latent(), alone.get_latent())
    assert table["elbo"].tolist() == pytest.approx([pyro_svae.fit(adata, seed=s, **FAST).elbo(adata, seed=3)
                                                    for s in (3, 4)])
    model.save(tmp_path / "model")
    pd.testing.assert_frame_equal(pyro_svae.load(tmp_path / "model").restarts, table)
    unseen = adata[adata.obs["perturbation"] == "p0"].copy()
    unseen.obs["perturbation"] = "unseen"
    pd.testing.assert_frame_equal(model.transfer(unseen, max_epochs=1).restarts, table)  # the same fit, extended
    assert pyro_svae.fit(adata, seed=3, **FAST).restarts is None  # one fit: no table
    with pytest.raises(ValueError, match="Expected n_restarts to be an integer >= 1, but got 0"):
        pyro_svae.fit(adata, n_restarts=0, **FAST)
    with pytest.raises(ValueError, match="Expected n_restarts=1 with checkpoint_every"):
        pyro_svae.fit(adata, n_restarts=2, checkpoint_every=1, checkpoint_dir="unused", **FAST)


def test_models_keep_their_own_parameters():
    adata = make_screen()
    a = pyro_svae.fit(adata, seed=1, **FAST)
    latent = a.get_latent()
    pyro_svae.fit(adata, seed=2, **FAST)  # a second fit must not disturb the first
    assert np.array_equal(a.get_latent(), latent)


def test_save_load_round_trip(fitted, tmp_path):
    model, adata = fitted
    model.save(tmp_path / "m")
    loaded = pyro_svae.load(tmp_path / "m", adata=adata)
    assert np.allclose(loaded.get_latent(), model.get_latent())
    pd.testing.assert_frame_equal(loaded.history, model.history)
    torch.manual_seed(0)
    pip_a = model.intervention_targets(num_samples=20)
    torch.manual_seed(0)
    pip_b = loaded.intervention_targets(num_samples=20)
    pd.testing.assert_frame_equal(pip_a, pip_b)
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    assert document["config"]["prior"] == "spike_and_slab" and document["gene_names"] == list(adata.var_names)
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "m")


def test_load_refuses_tampered_or_truncated_files(fitted, tmp_path):
    model, _ = fitted
    model.save(tmp_path / "m")
    params = tmp_path / "m" / "params.pt"
    params.write_bytes(params.read_bytes()[:-10])
    with pytest.raises(ValueError, match="checksum"):
        pyro_svae.load(tmp_path / "m")


def test_custom_prior_must_be_passed_again_on_load(tmp_path):
    import pyro
    import pyro.distributions as dist

    from pyro_svae.priors import plates

    def laplace_slab(n_perturbations, n_latent):
        with plates(n_perturbations, n_latent):
            return pyro.sample("shift", dist.Laplace(0.0, 2.0))  # [P, K]

    adata = make_screen()
    model = pyro_svae.fit(adata, prior=laplace_slab, **FAST)
    model.save(tmp_path / "m")
    with pytest.raises(ValueError, match="custom prior"):
        pyro_svae.load(tmp_path / "m")
    loaded = pyro_svae.load(tmp_path / "m", prior=laplace_slab, adata=adata)
    assert np.allclose(loaded.get_latent(), model.get_latent())


def test_genes_in_another_order_are_reordered_with_a_warning(fitted):
    model, adata = fitted
    shuffled = adata[:, adata.var_names[::-1]].copy()
    with pytest.warns(UserWarning, match="reordering"):
        latent = model.get_latent(shuffled)
    assert np.allclose(latent, model.get_latent(adata), atol=1e-5)
    with pytest.raises(ValueError, match="training genes"):
        model.get_latent(adata[:, 1:].copy())


def test_nan_loss_stops_training_with_the_step():
    import pyro
    import pyro.distributions as dist

    from pyro_svae.priors import plates

    def broken(n_perturbations, n_latent):
        with plates(n_perturbations, n_latent):
            shift = pyro.sample("shift", dist.Normal(0.0, 1.0))  # [P, K]
        return shift * float("nan")

    with pytest.raises(FloatingPointError, match="at step 1 "):
        pyro_svae.fit(make_screen(), prior=broken, **FAST)


def test_builtin_prior_with_bound_options_round_trips(tmp_path):
    import functools

    from pyro_svae.priors import spike_and_slab

    adata = make_screen()
    model = pyro_svae.fit(adata, prior=functools.partial(spike_and_slab, collapsed=False), **FAST)
    # min_shift="auto" is recorded as the number it was resolved to
    assert model.config.prior == "spike_and_slab" and model.config.prior_options == {"collapsed": False, "min_shift": 0.25}
    model.save(tmp_path / "m")
    loaded = pyro_svae.load(tmp_path / "m", adata=adata)
    assert np.allclose(loaded.get_latent(), model.get_latent())


@pytest.mark.parametrize("prior", ["spike_and_slab", "horseshoe"])
def test_models_saved_by_0_1_still_load(prior):
    """tests/data holds models written by pyro_svae 0.1.0 (format 1, parameter names without a namespace)."""
    from pathlib import Path

    data = Path(__file__).parent / "data"
    expected = json.loads((data / "model_0.1.0_expected.json").read_text())
    adata = pyro_svae.datasets.simulate(**expected["screen"])
    model = pyro_svae.load(data / f"model_0.1.0_{prior}", adata=adata)
    assert np.allclose(model.get_latent()[:5], expected[prior]["latent_first_cells"], atol=1e-6)
    if prior == "spike_and_slab":  # 0.1's prior, Beta(1, 50) with pi a point estimate
        assert model.config.prior == "beta_spike_and_slab"
        assert np.allclose(model.intervention_targets().to_numpy(), expected[prior]["intervention_targets"], atol=1e-6)
    assert all(name.startswith(("PriorGuide.", "encoder$$$", "decoder$$$")) or name == "dispersion"
               for name in model.params["params"])
    assert np.isfinite(model.marginal_log_likelihood(n_samples=3, seed=0))


def test_steps_per_epoch_count_the_last_partial_minibatch_and_set_the_auto_epochs():
    from pyro_svae.train import AUTO_EPOCHS, TARGET_STEPS, auto_max_epochs, steps_per_epoch

    assert [steps_per_epoch(n, 256) for n in (1, 256, 257, 4300)] == [1, 1, 2, 17]
    assert auto_max_epochs(4300, 256) == round(TARGET_STEPS / 17)
    assert (auto_max_epochs(10**7, 256), auto_max_epochs(10, 256)) == AUTO_EPOCHS == (50, 2000)  # the bounds


def test_conjugate_encoder_uses_each_cells_label_and_round_trips(tmp_path):
    adata = make_screen(seed=2)
    model = pyro_svae.fit(adata, encoder="conjugate", **FAST)
    state = torch.random.get_rng_state()
    latent = model.get_latent()
    assert torch.equal(torch.random.get_rng_state(), state)  # the mean shifts are drawn on their own stream
    assert np.array_equal(latent, model.get_latent())
    relabelled = adata.copy()
    moved = (relabelled.obs["perturbation"] == "p0").to_numpy()
    relabelled.obs["perturbation"] = relabelled.obs["perturbation"].astype(str).where(~moved, "control")
    shifted = model.get_latent(relabelled)  # the same counts with another label: q(z | x, a) moves
    assert np.array_equal(shifted[~moved], latent[~moved]) and not np.allclose(shifted[moved], latent[moved])
    model.save(tmp_path / "model")
    loaded = pyro_svae.load(tmp_path / "model", adata=adata)
    assert loaded.config.encoder == "conjugate"
    np.testing.assert_allclose(loaded.get_latent(), latent, rtol=1e-5, atol=1e-6)
    iwelbo, elbo = model.marginal_log_likelihood(n_samples=100, seed=0), model.elbo(seed=0)
    assert np.isfinite(iwelbo) and iwelbo > elbo
    with pytest.raises(ValueError, match="encoder.*'amortised'"):
        pyro_svae.fit(adata, encoder="amortised", **FAST)
