"""Priors as a modeler would write them, each taken through the whole API or refused up front.

Every prior of the zoo is fitted (2 epochs), then read through ``intervention_targets``,
``shifts``, ``marginal_log_likelihood``, ``predict``, ``counterfactual``, ``to_arviz``,
``transfer`` and a save/load round trip. The refused ones raise a ``ValueError`` naming the site.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

import pyro_svae
from pyro_svae.priors import ShiftMoments, latents_plate, perturbations_plate, plates, prior_scope

from .conftest import make_screen

FIT = dict(n_latent=3, n_hidden=8, n_layers=1, batch_size=64, max_epochs=2, progress=False)


def renamed_global_site(P, K):
    with plates(P, K):
        on = pyro.sample("my_inclusion", dist.Beta(1.0, 10.0), infer={"guide": "delta", "init": 0.5})  # [P, K]
        size = pyro.sample("size", dist.Normal(0.0, 3.0))  # [P, K]
    return on * size


def beta_bernoulli(P, K):
    with plates(P, K):
        p = pyro.sample("p", dist.Beta(1.0, 5.0))  # [P, K]
        mask = pyro.sample("mask", dist.Bernoulli(p), infer={"guide": "prior"})  # [P, K]
        shift = pyro.sample("shift", dist.Normal(0.0, 3.0))  # [P, K]
    return mask * shift


def global_outside_plates(P, K):
    width = pyro.sample("width", dist.HalfNormal(2.0))  # []
    with plates(P, K):
        shift = pyro.sample("shift", dist.Normal(0.0, width))  # [P, K]
    return shift


def bounded_tanh(P, K):
    with plates(P, K):
        raw = pyro.sample("raw", dist.Normal(0.0, 1.0))  # [P, K]
    return 4 * torch.tanh(raw)


def latents_plate_reused(P, K):
    with latents_plate(K):
        scale = pyro.sample("latent_scale", dist.HalfNormal(3.0))  # [K]
    with plates(P, K):
        shift = pyro.sample("shift", dist.Normal(0.0, scale))  # [P, K]
    return shift


def scale_named_like_a_guide_parameter(P, K):
    scale = pyro.sample("shift_scale", dist.HalfCauchy(torch.tensor(1.0)))  # []
    with plates(P, K):
        shift = pyro.sample("shift", dist.Laplace(0.0, scale))  # [P, K]
    return shift


def hyper_mean_named_shift_loc(P, K):
    with latents_plate(K):
        mean = pyro.sample("shift_loc", dist.Normal(0.0, 1.0))  # [K]
    with plates(P, K):
        shift = pyro.sample("shift", dist.Normal(mean, 2.0))  # [P, K]
    return shift


def own_param_and_a_site_named_slab(P, K):
    scale = pyro.param("slab_scale", torch.tensor(2.0), constraint=constraints.positive)  # the prior's own
    with plates(P, K):
        slab = pyro.sample("slab", dist.Normal(0.0, scale))  # [P, K]
    return slab


def dirichlet_weights(P, K):
    with pyro.plate("perturbations", P, dim=-1):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(K)))  # [P, K], simplex per perturbation
        size = pyro.sample("size", dist.Normal(0.0, 3.0))  # [P]
    return weights * size[:, None]


def multivariate_normal_rows(P, K):
    with pyro.plate("perturbations", P, dim=-1):
        shift = pyro.sample("shift", dist.MultivariateNormal(torch.zeros(K), 4.0 * torch.eye(K)))  # [P, K]
    return shift


def strength_of_shape_p_by_1(P, K):
    with perturbations_plate(P):
        strength = pyro.sample("strength", dist.HalfNormal(2.0))  # [P, 1]: the plate is at dim -2
    with plates(P, K):
        direction = pyro.sample("direction", dist.Normal(0.0, 1.0))  # [P, K]
    return strength * direction


def beta_site_named_mask(P, K):
    with plates(P, K):
        mask = pyro.sample("mask", dist.Beta(2.0, 2.0))  # [P, K], continuous in (0, 1)
        shift = pyro.sample("shift", dist.Normal(0.0, 3.0))  # [P, K]
    return mask * shift


def with_deterministic(P, K):
    with plates(P, K):
        raw = pyro.sample("raw", dist.Normal(0.0, 2.0))  # [P, K]
        soft = pyro.deterministic("soft_threshold", torch.sign(raw) * torch.relu(raw.abs() - 0.5))  # [P, K]
    return soft


def with_factor(P, K):
    with plates(P, K):
        shift = pyro.sample("shift", dist.Normal(0.0, 3.0))  # [P, K]
    pyro.factor("group_lasso", -shift.norm(dim=-1).sum())
    return shift


def student_t_slab(P, K):
    """The tutorial's slab, with the package's data-scaled sparsity."""
    logits = pyro_svae.priors.inclusion_logits(P, K)
    with plates(P, K):
        pi = pyro.sample("pi", pyro_svae.distributions.InclusionProbability(logits),
                         infer={"guide": "delta", "init": 0.9})  # [P, K]
        with poutine.scale(scale=pi):
            shift = pyro.sample("shift", dist.StudentT(3.0, 0.0, 2.0))  # [P, K]
    return ShiftMoments(pi * shift, pi * (1 - pi) * shift**2, inclusion=pi)


WORKS = [renamed_global_site, beta_bernoulli, global_outside_plates, bounded_tanh, latents_plate_reused,
         scale_named_like_a_guide_parameter, hyper_mean_named_shift_loc, own_param_and_a_site_named_slab,
         dirichlet_weights, multivariate_normal_rows, strength_of_shape_p_by_1, beta_site_named_mask,
         with_deterministic, with_factor, student_t_slab] + sorted(pyro_svae.priors.PRIORS)


def _site_named(name):
    def prior(P, K):
        with plates(P, K):
            return pyro.sample(name, dist.Normal(0.0, 1.0))  # [P, K]
    prior.__name__ = f"site_named_{name}"
    return prior


def own_latents_plate(P, K):
    with pyro.plate("latents", K, dim=-1):
        scale = pyro.sample("scale", dist.HalfNormal(1.0))  # [K]
    with plates(P, K):
        return pyro.sample("shift", dist.Normal(0.0, scale))  # [P, K]


def bernoulli_point_estimate(P, K):
    with plates(P, K):
        mask = pyro.sample("mask", dist.Bernoulli(0.2), infer={"guide": "delta"})  # [P, K]
        shift = pyro.sample("shift", dist.Normal(0.0, 3.0))  # [P, K]
    return mask * shift


def poisson_counts_of_targets(P, K):
    with plates(P, K):
        n = pyro.sample("n", dist.Poisson(1.0))  # [P, K]
    return n


def sequential_plate(P, K):
    rows = []
    for p in pyro.plate("perturbations", P):
        rows.append(pyro.sample(f"row{p}", dist.Normal(torch.zeros(K), 1.0).to_event(1)))  # [K]
    return torch.stack(rows)


REFUSED = {
    **{f"site_named_{n}": (_site_named(n), "reserved") for n in ("z", "counts", "cells", "dispersion", "shift_variance",
                                                                  "delta", "inclusion")},
    "own_latents_plate": (own_latents_plate, "latents_plate"),
    "bernoulli_point_estimate": (bernoulli_point_estimate, "point estimate of a discrete site"),
    "poisson_counts_of_targets": (poisson_counts_of_targets, "only Bernoulli is supported"),
    "sequential_plate": (sequential_plate, "sequential plate"),
}


@pytest.fixture(scope="module")
def screens():
    adata = make_screen(n_perturbations=5, seed=3)
    new = adata.obs["perturbation"].isin(["p4", "control"]).to_numpy()
    return adata[adata.obs["perturbation"] != "p4"].copy(), adata[new].copy()


def _name(prior):
    return prior if isinstance(prior, str) else prior.__name__


@pytest.mark.parametrize("prior", WORKS, ids=_name)
def test_prior_works_through_the_whole_api(prior, screens, tmp_path):
    seen, new = screens
    model = pyro_svae.fit(seen, prior=prior, **FIT)
    P, K = len(model.perturbation_names), 3
    targets, shifts = model.intervention_targets(num_samples=10), model.shifts(num_samples=10)
    assert targets.shape == shifts.shape == (P, K) and np.isfinite(shifts.to_numpy()).all()
    assert ((targets >= 0) & (targets <= 1)).all().all()
    assert np.isfinite(model.marginal_log_likelihood(n_samples=3, seed=0))
    assert model.predict(["p0+p1", "control"], n_cells=4, seed=0).shape == (8, seen.n_vars)
    assert model.counterfactual(seen[:5], "p2", num_samples=2, seed=0).shape == (2, 5, seen.n_vars)
    idata = model.to_arviz(num_samples=3, cells=np.arange(6))
    with prior_scope():  # one plate per name, as the model calls the prior
        prototype = poutine.trace(prior if callable(prior) else pyro_svae.priors.PRIORS[prior]).get_trace(P, K)
    for name, site in prototype.nodes.items():  # every sample and deterministic site is exported
        if site["type"] == "sample" and not site_is_subsample(site) and type(site["fn"]).__name__ != "Unit":
            assert name in idata.posterior, name
    transferred = model.transfer(new, max_epochs=2, seed=0)
    again = model.transfer(new, max_epochs=2, seed=0)
    assert transferred.perturbation_names == model.perturbation_names + ("p4",)
    for name, value in transferred.params["params"].items():  # seeded: the same new rows
        assert torch.equal(value, again.params["params"][name]), name
    assert transferred.intervention_targets(num_samples=5).shape == (P + 1, K)
    transferred.save(tmp_path / "m")
    loaded = pyro_svae.load(tmp_path / "m", prior=None if isinstance(prior, str) else prior, adata=new)
    assert np.allclose(loaded.get_latent(), transferred.get_latent(new))


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_prior_is_refused_at_fit_time_with_the_site_named(case, screens):
    prior, message = REFUSED[case]
    seen, _ = screens
    with pytest.raises(ValueError, match=message):
        pyro_svae.fit(seen, prior=prior, **FIT)


def test_reserved_names_are_listed(screens):
    seen, _ = screens
    with pytest.raises(ValueError, match=r"Reserved: \['z', 'counts', 'cells'"):
        pyro_svae.fit(seen, prior=_site_named("z"), **FIT)


def test_prior_params_are_the_models_and_are_optimised(screens):
    seen, _ = screens
    model = pyro_svae.fit(seen, prior=own_param_and_a_site_named_slab, **{**FIT, "max_epochs": 5})
    params = model.params["params"]
    assert "slab_scale" in params and "PriorGuide.scales.slab" in params  # apart, never shared
    assert not torch.equal(params["slab_scale"], params["PriorGuide.scales.slab"])
    unconstrained_start = torch.log(torch.tensor(2.0))
    assert not torch.allclose(params["slab_scale"], unconstrained_start)  # it was trained


def test_per_perturbation_sites_are_found_from_the_plates():
    table = pyro_svae.describe_guide(multivariate_normal_rows, 4, 3)
    assert table.loc[0, "per_perturbation"] and table.loc[0, "shape"] == (4, 3)
    table = pyro_svae.describe_guide(strength_of_shape_p_by_1, 4, 3).set_index("site")
    assert table.loc["strength", "per_perturbation"] and table.loc["strength", "shape"] == (4, 1)
    table = pyro_svae.describe_guide(global_outside_plates, 4, 3).set_index("site")
    assert not table.loc["width", "per_perturbation"]
    table = pyro_svae.describe_guide(dirichlet_weights, 4, 3).set_index("site")
    assert table.loc["weights", "parameters"].startswith("PriorGuide.locs.weights (4, 2)")  # unconstrained: K - 1
