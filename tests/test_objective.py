"""The fused training objective is TraceMeanField_ELBO's estimator: equal losses and gradients on
the same draws, for every prior of the zoo."""

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import TraceMeanField_ELBO

import pyro_svae
from pyro_svae import objective
from pyro_svae.elbo import local_elbo
from pyro_svae.factory import SVAEConfig, build, create_params, layout_of
from pyro_svae.data import read_screen
from pyro_svae.runtime import DataOnDevice, param_scope

from .conftest import make_screen
from .test_prior_zoo import WORKS

PRIORS = WORKS + ["spike_and_slab_sampled"]


def _components(prior, likelihood="nb", encoder="counts"):
    adata = make_screen(n_perturbations=5, seed=3)
    screen = read_screen(adata)
    if prior == "spike_and_slab_sampled":
        prior = pyro_svae.priors.spike_and_slab
        config = SVAEConfig(n_latent=3, n_hidden=8, n_layers=1, likelihood=likelihood, prior_options={"collapsed": False},
                            encoder=encoder)
    else:
        config = SVAEConfig(n_latent=3, n_hidden=8, n_layers=1, likelihood=likelihood,
                            prior=prior if isinstance(prior, str) else "custom", encoder=encoder)
    components = build(config, layout_of(screen), prior)
    index = np.arange(0, screen.n_cells, 7)
    return components, DataOnDevice(screen, torch.device("cpu")).minibatch(index), index, screen.n_cells


def _both(components, batch, index, n_cells, kl_weight):
    model_fn, guide_fn = components.functions()
    pyro.set_rng_seed(0)
    fused, cells = objective.elbo(components, batch, n_cells, kl_weight)
    pyro.set_rng_seed(0)
    reference = -TraceMeanField_ELBO().differentiable_loss(model_fn, guide_fn, n_cells=n_cells,
                                                           cell_index=torch.as_tensor(index), kl_weight=kl_weight,
                                                           **batch)
    return fused, reference, cells


@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: p if isinstance(p, str) else p.__name__)
def test_fused_elbo_equals_trace_mean_field_elbo(prior, encoder="counts"):
    components, batch, index, n_cells = _components(prior, encoder=encoder)
    with param_scope({}) as store:
        create_params(components, "cpu")
        for kl_weight in (1.0, 0.3):
            fused, reference, _ = _both(components, batch, index, n_cells, kl_weight)
            assert fused.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-3), kl_weight
        params = objective.parameters(store)
        grads = []
        for value in _both(components, batch, index, n_cells, 1.0)[:2]:
            for p in params:
                p.grad = None
            value.backward()
            grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
        for name, a, b in zip(store.keys(), *grads):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), name


@pytest.mark.parametrize("encoder", ["conjugate", "full"])
@pytest.mark.parametrize("prior", ["spike_and_slab", "spike_and_slab_sampled", "gaussian", "horseshoe"])
def test_fused_elbo_with_each_encoder(prior, encoder):
    """q(z | x, a) depends on the shifts (gradients into the prior's guide too); a full covariance's KL
    to the cells' prior is registered in closed form: values and gradients as Pyro's."""
    test_fused_elbo_equals_trace_mean_field_elbo(prior, encoder=encoder)


@pytest.mark.parametrize("likelihood", ["zinb", "poisson"])
def test_fused_elbo_with_each_likelihood(likelihood):
    components, batch, index, n_cells = _components("spike_and_slab", likelihood)
    with param_scope({}):
        create_params(components, "cpu")
        fused, reference, _ = _both(components, batch, index, n_cells, 1.0)
    assert fused.item() == pytest.approx(reference.item(), rel=1e-5)


def test_cells_elbo_of_the_fused_pass_is_the_local_elbo():
    components, batch, _, _ = _components("spike_and_slab")
    with param_scope({}):
        create_params(components, "cpu")
        pyro.set_rng_seed(0)
        fused = objective.cell_elbo(components, batch)
        pyro.set_rng_seed(0)
        reference = local_elbo(*components.functions(), batch)
    assert torch.allclose(fused, reference, rtol=1e-5)


def test_both_objectives_train_to_the_same_place():
    adata = make_screen(seed=5)
    fits = {name: pyro_svae.fit(adata, n_latent=3, n_hidden=16, n_layers=1, batch_size=64, max_epochs=40, seed=0,
                                progress=False, objective=name) for name in ("fused", "pyro")}
    elbos = {name: model.marginal_log_likelihood(n_samples=20, seed=0) for name, model in fits.items()}
    assert abs(elbos["fused"] - elbos["pyro"]) < 1.0, elbos
    with pytest.raises(ValueError, match="objective 'fused' or 'pyro'"):
        pyro_svae.fit(adata, n_latent=3, max_epochs=1, progress=False, objective="nope")
