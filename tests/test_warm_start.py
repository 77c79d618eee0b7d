"""The dense warm start: the sparsest rotation of a rotated sparse matrix, and networks rotated
without changing what they compute."""

import numpy as np
import pytest
import torch

import pyro_svae
from pyro_svae import warm_start
from pyro_svae.nets import Networks

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


def test_fit_with_a_warm_start_records_both_stages():
    model = pyro_svae.fit(make_screen(), warm_start="rotate", **{**FAST, "max_epochs": 10})
    stages = model.history["stage"]
    assert list(stages.unique()) == ["dense", "sparse"] and (stages == "dense").sum() == 3
    assert model.history["epoch"].tolist() == list(range(10)) and model.history["restored"].sum() == 1
    assert not any(name.startswith("PriorGuide.locs.shift") and value.shape != (4, 3)
                   for name, value in model.params["params"].items())
    with pytest.raises(ValueError, match="warm_start"):
        pyro_svae.fit(make_screen(), warm_start="spin", **FAST)
