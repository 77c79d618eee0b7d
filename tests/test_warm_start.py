"""The dense warm start: the sparsest rotation of a rotated sparse matrix, and networks rotated
without changing what they compute."""

import numpy as np
import pandas as pd
import pytest
import torch

import pyro_svae
from pyro_svae import warm_start
from pyro_svae.nets import Networks
from pyro_svae.train import TrainConfig

from .conftest import FAST, make_screen


def test_sparsest_rotation_undoes_a_rotation_of_sparse_shifts():
    rng = np.random.default_rng(0)
    sparse = np.zeros((60, 6))
    for row in sparse:  # one to three targets each, as a screen's perturbations
        row[rng.choice(6, rng.integers(1, 4), replace=False)] = rng.choice([-1, 1]) * rng.normal(3, 0.5)
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    found = warm_start.sparsest_rotation(sparse @ rotation.T)
    assert np.allclose(found.T @ found, np.eye(6), atol=1e-8)
    recovered = sparse @ rotation.T @ found  # the original up to a signed permutation of the columns
    matched = np.abs(np.corrcoef(recovered.T, sparse.T)[:6, 6:]).max(1)
    assert matched.min() > 0.99, matched
    assert np.allclose(found, warm_start.sparsest_rotation(sparse @ rotation.T))  # deterministic


def test_rotated_networks_compute_the_same_function_in_the_new_axes():
    torch.manual_seed(0)
    nets = Networks(20, 4, n_hidden=8, n_layers=2, n_batches=2)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(4, 4)))[0]
    x, batch = torch.poisson(torch.full((5, 20), 3.0)), torch.tensor([0, 1, 0, 1, 1])
    z = torch.randn(5, 4)
    with torch.no_grad():
        loc_before = nets.encoder(x, batch)[0]
        decoded_before = nets.decoder(z, batch)[0]
        translation = np.array([0.5, -1.0, 0.0, 2.0])
        warm_start.rotate_networks(nets, rotation, translation)
        r, t = torch.as_tensor(rotation, dtype=torch.float32), torch.as_tensor(translation, dtype=torch.float32)
        assert torch.allclose(nets.encoder(x, batch)[0], loc_before @ r - t, atol=1e-5)  # z' = R^T z - t
        assert torch.allclose(nets.decoder(z @ r - t, batch)[0], decoded_before, atol=1e-5)  # decodes z' as z


def test_rotated_start_rotates_about_the_controls_and_drops_the_prior_guide():
    adata = make_screen(n_perturbations=8, n_latent=3)
    model = pyro_svae.fit(adata, **{**FAST, "max_epochs": 5})
    screen, latent = model._read(adata), model.get_latent(adata)
    rotation = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))[0]
    origin = warm_start.control_origin(latent, screen.perturbations, screen.n_perturbations)
    params = warm_start.rotated_start(model.components, model.params, latent, rotation, screen.perturbations,
                                      screen.n_perturbations)
    assert params == warm_start.without_prior_params(model.params, model.components)
    assert set(params["params"]) < set(model.params["params"])  # the prior's guide parameters are gone
    controls = (adata.obs["perturbation"] == "control").to_numpy()
    x = torch.as_tensor(np.asarray(adata.X)[controls], dtype=torch.float32)
    with torch.no_grad():
        rotated = model.components.nets.encoder(x)[0].numpy()
    np.testing.assert_allclose(rotated, (latent[controls] - origin) @ rotation, atol=1e-4)  # z' = R^T (z - o)
    np.testing.assert_allclose(rotated.mean(0), 0.0, atol=1e-4)  # the controls at the origin


def test_fit_with_a_warm_start_records_both_stages():
    model = pyro_svae.fit(make_screen(), warm_start="rotate", **{**FAST, "max_epochs": 10})
    stages = model.history["stage"]
    assert list(stages.unique()) == ["dense", "sparse"] and (stages == "dense").sum() == 3
    assert model.history["epoch"].tolist() == list(range(10)) and model.history["restored"].sum() == 1
    assert not any(name.startswith("PriorGuide.locs.shift") and value.shape != (4, 3)
                   for name, value in model.params["params"].items())
    with pytest.raises(ValueError, match="warm_start"):
        pyro_svae.fit(make_screen(), warm_start="spin", **FAST)


def _latents_with_shifts(delta, cells=30, seed=0):
    """Posterior-mean stand-ins: ``cells`` cells per perturbation around its shift, codes padded."""
    rng = np.random.default_rng(seed)
    n_perturbations = len(delta)
    codes = np.repeat(np.arange(n_perturbations), cells)[:, None]
    latent = delta[codes[:, 0]] + 0.3 * rng.normal(size=(len(codes), delta.shape[1]))
    pair = np.array([[0, 1]] * 5)  # cells with two perturbations are left out of the estimate
    latent = np.concatenate([latent, rng.normal(size=(5, delta.shape[1])) * 10])
    return latent, np.concatenate([np.pad(codes, ((0, 0), (0, 1)), constant_values=n_perturbations), pair])


def _sparse_shifts(rng, n_perturbations=24, n_latent=4):
    """Shifts ``[P, K]`` of one or two targets each, of about 3 SD."""
    sparse = np.zeros((n_perturbations, n_latent))
    for row in sparse:
        row[rng.choice(n_latent, rng.integers(1, 3), replace=False)] = rng.choice([-1, 1]) * rng.normal(3, 0.5)
    return sparse


def test_residual_rotation_tells_mixed_latents_from_aligned_ones():
    rng = np.random.default_rng(0)
    sparse = _sparse_shifts(rng)
    latent, codes = _latents_with_shifts(sparse)
    _, closeness = warm_start.residual_rotation(latent, codes, 24)
    assert closeness > 0.99  # at its sparsest already
    angle = np.pi / 5  # two latents mixed by 36 degrees
    mix = np.eye(4)
    mix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rotation, closeness = warm_start.residual_rotation(latent @ mix, codes, 24)
    assert closeness < warm_start.REROTATE_BELOW
    unmixed = latent @ mix @ rotation
    assert np.abs(np.corrcoef(unmixed.T, latent.T)[:4, 4:]).max(1).min() > 0.99
    # too few perturbations for the rotation to be determined: left alone
    few, few_codes = _latents_with_shifts(sparse[:7])
    assert warm_start.residual_rotation(few @ mix, few_codes, 7) == (pytest.approx(np.eye(4)), 1.0)
    # nor by perturbations without a phenotype: 7 shifted and 30 at noise level (|mean| ~ 0.1) pin nothing ...
    quiet = np.concatenate([sparse[:7], 0.1 * rng.normal(size=(30, 4))])
    quiet_latent, quiet_codes = _latents_with_shifts(quiet)
    assert warm_start.residual_rotation(quiet_latent @ mix, quiet_codes, 37) == (pytest.approx(np.eye(4)), 1.0)
    # ... while the same 30 beside 8 shifted ones (2K) leave the mixed axes found
    mixed = np.concatenate([sparse[:8], quiet[7:]])
    mixed_latent, mixed_codes = _latents_with_shifts(mixed)
    assert warm_start.residual_rotation(mixed_latent @ mix, mixed_codes, 38)[1] < warm_start.REROTATE_BELOW


def test_residual_rotation_measures_the_shifts_from_the_control_cells():
    rng = np.random.default_rng(0)
    sparse = _sparse_shifts(rng)
    latent, codes = _latents_with_shifts(sparse)
    controls = 0.3 * rng.normal(size=(60, 4))
    latent, codes = np.concatenate([latent, controls]), np.concatenate([codes, np.full((60, 2), 24)])
    assert np.allclose(warm_start.control_origin(latent, codes, 24), controls.mean(0))
    assert np.array_equal(warm_start.control_origin(latent[:-60], codes[:-60], 24), np.zeros(4))  # no controls
    # every cell off the origin by the same dense offset, the controls too (a fit whose controls left
    # the origin): measured from the controls, the shifts are as sparse as they were
    offset = np.array([2.0, -2.0, 2.0, 2.0])
    _, closeness = warm_start.residual_rotation(latent + offset, codes, 24)
    assert closeness > 0.99
    # measured from 0 instead, the shared offset looks like one more target of every perturbation
    _, from_zero = warm_start.residual_rotation((latent + offset)[:-60], codes[:-60], 24)
    assert from_zero < warm_start.REROTATE_BELOW


def test_the_warm_start_moves_the_origin_to_the_control_cells(monkeypatch):
    adata = make_screen(n_perturbations=8, n_latent=3)
    counts = torch.as_tensor(np.asarray(adata.X)[(adata.obs["perturbation"] == "control").to_numpy()],
                             dtype=torch.float32)
    origins = []
    dense_rotated_start = warm_start.dense_rotated_start

    def spy(components, *args, **kwargs):
        result = dense_rotated_start(components, *args, **kwargs)
        with torch.no_grad():
            origins.append(components.nets.encoder(counts)[0].mean(0).numpy())  # the controls' mean latent
        return result

    monkeypatch.setattr(warm_start, "dense_rotated_start", spy)
    pyro_svae.fit(adata, **{**FAST, "max_epochs": 10})
    assert len(origins) == 1 and np.abs(origins[0]).max() < 1e-4, origins


def test_the_dense_stage_fits_warm_start_prior(monkeypatch):
    adata = make_screen(n_perturbations=8, n_latent=3)
    built, build = [], warm_start.build

    def spy(config, *args, **kwargs):
        built.append((config.prior, config.prior_options))
        return build(config, *args, **kwargs)

    monkeypatch.setattr(warm_start, "build", spy)
    assert warm_start.WARM_START_PRIOR == ("gaussian", {})
    pyro_svae.fit(adata, **{**FAST, "max_epochs": 4})
    monkeypatch.setattr(warm_start, "WARM_START_PRIOR", ("laplace", {"scale": 2.0}))
    model = pyro_svae.fit(adata, **{**FAST, "max_epochs": 4})
    assert built == [("gaussian", {}), ("laplace", {"scale": 2.0})]
    # only the dense stage changes: the sparse stage and the fitted model keep the prior fit was given
    assert model.components.config.prior == "spike_and_slab" and "PriorGuide.values.pi" in model.params["params"]
    assert np.isfinite(model.get_latent()).all()


def test_fit_rerotates_a_converged_fit_left_with_mixed_latents(monkeypatch, caplog):
    adata = make_screen(n_perturbations=8, n_latent=3)
    converging = {**FAST, "max_epochs": 300, "patience": 3}  # early stopping ends the sparse stage
    plain = pyro_svae.fit(adata, **{**FAST, "max_epochs": 10})  # cut short by max_epochs: left alone
    monkeypatch.setattr(warm_start, "REROTATE_BELOW", 1.01)  # every converged fit counts as mixed
    assert "re-rotated" not in set(pyro_svae.fit(adata, **{**FAST, "max_epochs": 10}).history["stage"])
    with caplog.at_level("INFO", logger="pyro_svae"):
        model = pyro_svae.fit(adata, **converging)
    assert "rotating (origin at the controls) and fitting the prior again" in caplog.text
    stages = model.history["stage"]
    assert list(stages.unique()) == ["dense", "sparse", "re-rotated"] and (stages == "dense").sum() == 90
    assert model.history["epoch"].tolist() == list(range(len(model.history)))
    assert model.history["restored"].sum() == 1
    assert model.restored_epoch >= model.history.loc[stages == "re-rotated", "epoch"].min()
    assert np.isfinite(model.get_latent()).all() and model.intervention_targets().shape == (8, 3)
    assert np.allclose(plain.get_latent(), pyro_svae.fit(adata, **{**FAST, "max_epochs": 10}).get_latent())


def test_a_sparse_stage_has_settled_when_it_stopped_early_or_ran_enough_steps():
    config = TrainConfig(batch_size=10, max_epochs=100)
    cells = warm_start.SETTLED_STEPS // 100 * 10  # SETTLED_STEPS / 100 steps per epoch
    assert warm_start.has_settled(40, config, 10)  # early stopping ended it
    assert not warm_start.has_settled(100, config, cells - 10)  # every epoch, too few steps
    assert warm_start.has_settled(100, config, cells)  # every epoch, enough steps


def test_fit_rerotates_a_fit_that_used_every_epoch_once_it_has_settled(monkeypatch, tmp_path):
    # most fits at the default max_epochs="auto" use every epoch (the validation ELBO creeps up to
    # the end): they are checked as a converged fit is, once the sparse stage ran SETTLED_STEPS steps
    adata = make_screen(n_perturbations=8, n_latent=3)
    every_epoch = {**FAST, "max_epochs": 10, "early_stopping": False}  # 7 sparse epochs of 4 steps
    monkeypatch.setattr(warm_start, "REROTATE_BELOW", 1.01)  # every checked fit counts as mixed
    unsettled = pyro_svae.fit(adata, **every_epoch).history  # 28 steps: not settled, not checked
    assert not warm_start.was_rerotated(unsettled) and warm_start.rotation_closeness(unsettled) is None
    monkeypatch.setattr(warm_start, "SETTLED_STEPS", 28)
    model = pyro_svae.fit(adata, **every_epoch)
    assert warm_start.was_rerotated(model.history)
    assert (model.history["stage"] == "re-rotated").sum() == 7
    # the closeness that decided it stays in the history, on the checked stage's last epoch, and is saved
    closeness = warm_start.rotation_closeness(model.history)
    checked = model.history[model.history["closeness"].notna()]
    assert 0.0 < closeness <= 1.0 and checked["stage"].tolist() == ["sparse"]
    assert checked["epoch"].item() == model.history.loc[model.history["stage"] == "sparse", "epoch"].max()
    model.save(tmp_path / "model")
    assert warm_start.rotation_closeness(pyro_svae.load(tmp_path / "model").history) == closeness


def test_was_rerotated_reads_the_stages_of_a_history():
    stages = [pd.DataFrame({"epoch": [0, 1], "stage": "dense"}), pd.DataFrame({"epoch": [2, 3]})]
    assert not warm_start.was_rerotated(warm_start.join_histories(stages))  # dense, then sparse
    again = pd.DataFrame({"epoch": [4], "stage": "re-rotated"})
    assert warm_start.was_rerotated(warm_start.join_histories(stages + [again]))
    assert not warm_start.was_rerotated(pd.DataFrame({"epoch": [0, 1]}))  # no warm start: no stage column
    assert warm_start.rotation_closeness(pd.DataFrame({"epoch": [0, 1]})) is None  # never checked
    checked = pd.DataFrame({"epoch": [2, 3], "closeness": [np.nan, 0.96]})
    assert warm_start.rotation_closeness(warm_start.join_histories(stages[:1] + [checked, again])) == 0.96
