"""The prior's guide fitted to convergence with the networks fixed (pyro_svae.prior_refit), as fit's last step."""

import copy

import numpy as np
import pytest
import torch

import pyro_svae
from pyro_svae.prior_refit import refit_prior
from pyro_svae.train import split_cells

from .conftest import FAST, make_screen, prior_part_of_elbo

PI = "PriorGuide.values.pi"


def _train_cells(screen, seed: int = 0):
    return split_cells(screen.n_cells, 0.1, np.random.default_rng(seed))[0]  # fit's split, its default fraction


def _objective(model, screen) -> float:
    """The prior's part of the ELBO on fit's training cells."""
    return prior_part_of_elbo(model, screen, _train_cells(screen))


@pytest.fixture(scope="module")
def short_fit():
    """A fit stopped after a few epochs: its inclusion probabilities would still be near their start."""
    adata = make_screen(n_perturbations=6, n_cells_per_perturbation=25, seed=3)
    return pyro_svae.fit(adata, **FAST, seed=0), adata


def test_fit_leaves_the_prior_guide_at_its_optimum_given_the_networks(short_fit):
    model, adata = short_fit
    screen = model._read(adata)
    fitted = _objective(model, screen)
    # the same networks, the inclusion probabilities put back where training starts them
    restarted = copy.deepcopy(model)
    restarted.params["params"][PI] = torch.full_like(model.params["params"][PI], float(np.log(0.95 / 0.05)))
    start = _objective(restarted, screen)
    refit_prior(restarted.components, restarted.params, screen, torch.device("cpu"), _train_cells(screen), seed=0)
    again = _objective(restarted, screen)
    assert again - start > 20.0  # from the training's start the refit gains a lot ...
    assert abs(again - fitted) < 0.05 * (again - start)  # ... and fit had already reached the same optimum
    pips = model.intervention_targets().to_numpy()
    assert pips.min() < 0.05  # a short fit without the refit keeps every entry near 0.95


def test_refit_changes_only_the_prior_guide(short_fit):
    model, adata = short_fit
    copied = copy.deepcopy(model)
    nets_before = {k: v.clone() for k, v in copied.nets.state_dict().items()}
    params_before = {k: v.detach().clone() for k, v in copied.params["params"].items()}
    prior_names = {name for site in copied.components.sites for name in site.params.values()}
    copied.params["params"][PI] = torch.zeros_like(copied.params["params"][PI])  # pi = 0.5 everywhere
    steps = refit_prior(copied.components, copied.params, copied._read(adata), torch.device("cpu"), steps=50, seed=0)
    assert steps == 50
    for key, value in copied.nets.state_dict().items():
        assert torch.equal(value, nets_before[key]), key
    for name, value in copied.params["params"].items():
        if name not in prior_names:
            assert torch.equal(value.detach(), params_before[name]), name
    assert not torch.equal(copied.params["params"][PI], torch.zeros_like(copied.params["params"][PI]))


def test_refit_is_a_no_op_for_a_prior_without_guide_parameters():
    adata = make_screen(seed=2)
    model = pyro_svae.fit(adata, **FAST, prior="none")
    assert refit_prior(model.components, model.params, model._read(adata), torch.device("cpu")) == 0


def test_refit_is_deterministic_given_its_seed(short_fit):
    model, adata = short_fit
    results = []
    for _ in range(2):
        copied = copy.deepcopy(model)
        copied.params["params"][PI] = torch.zeros_like(copied.params["params"][PI])
        refit_prior(copied.components, copied.params, copied._read(adata), torch.device("cpu"), steps=100, seed=7)
        results.append(copied.params["params"][PI].detach().clone())
    assert torch.equal(results[0], results[1])
