"""The CUDA path: fit, read and predict with everything on the GPU (skipped without CUDA)."""

import numpy as np
import pytest
import torch

import pyro_svae

from .conftest import FAST, make_screen

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("prior", ["spike_and_slab", "horseshoe", "none"])
def test_fit_and_read_on_the_gpu(prior):
    adata = make_screen()
    model = pyro_svae.fit(adata, prior=prior, device="cuda", warm_start="rotate", **{**FAST, "max_epochs": 6})
    assert model.device.type == "cuda" and next(model.nets.parameters()).is_cuda
    assert all(value.is_cuda for value in model.params["params"].values())
    assert np.isfinite(model.get_latent()).all()
    assert model.intervention_targets().shape == (4, 3)
    assert np.isfinite(model.marginal_log_likelihood(n_samples=5, seed=0))
    assert model.predict(["p0+p1"], n_cells=10, seed=0).shape == (10, adata.n_vars)
    assert model.counterfactual(adata[:5], "p0", num_samples=2).shape == (2, 5, adata.n_vars)
    assert model.gene_programs(adata[:20]).shape == (3, adata.n_vars)
    new = adata[adata.obs["perturbation"].isin(["p3", "control"]).to_numpy()].copy()
    seen = adata[(adata.obs["perturbation"] != "p3").to_numpy()].copy()
    transferred = pyro_svae.fit(seen, prior=prior, device="cuda", **FAST).transfer(new, max_epochs=2)
    assert transferred.perturbation_names[-1] == "p3"


def test_gpu_and_cpu_fits_agree_in_distribution():
    adata = make_screen(seed=4)
    options = {**FAST, "max_epochs": 30}
    on_gpu = pyro_svae.fit(adata, device="cuda", **options).marginal_log_likelihood(n_samples=20, seed=0)
    on_cpu = pyro_svae.fit(adata, device="cpu", **options).marginal_log_likelihood(n_samples=20, seed=0)
    assert abs(on_gpu - on_cpu) < 2.0
