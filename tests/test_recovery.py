"""Recovery on the package's simulator with default settings (slow: fits to convergence)."""

import pytest

import pyro_svae
from pyro_svae.demo import DEMO_SCREEN, recovery


@pytest.fixture(scope="module")
def demo_screen():
    return pyro_svae.datasets.simulate(**DEMO_SCREEN)


@pytest.fixture(scope="module")
def sparse_and_plain(demo_screen):
    fits = {prior: pyro_svae.fit(demo_screen, n_latent=DEMO_SCREEN["n_latent"], prior=prior, progress=False)
            for prior in ("spike_and_slab", "none")}
    return {prior: recovery(model, demo_screen) for prior, model in fits.items()}


@pytest.mark.slow
def test_spike_and_slab_recovers_latents_and_targets(sparse_and_plain):
    scores = sparse_and_plain["spike_and_slab"]
    assert scores["mcc"] >= 0.9, scores
    assert scores["target_f1"] >= 0.9, scores


@pytest.mark.slow
def test_sparsity_beats_a_plain_vae(sparse_and_plain):
    assert sparse_and_plain["spike_and_slab"]["mcc"] >= sparse_and_plain["none"]["mcc"] + 0.15, sparse_and_plain
