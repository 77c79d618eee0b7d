"""Model and guide: shapes of every site, guide mirrors model, each prior trains under validation."""

import functools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import ClippedAdam

from pyro_svae.distributions import InclusionProbability, StraightThroughBernoulli
from pyro_svae.factory import Layout, SVAEConfig, build
from pyro_svae.model import cell_shifts, model
from pyro_svae.guide import encode
from pyro_svae.nets import Encoder, Networks
from pyro_svae.priors import AUTO_FRACTION, MIN_SHIFT, PRIORS, plates, resolve_min_shift, resolve_prior
from pyro_svae.sites import describe_prior

P, K, G, B = 4, 3, 30, 16


def student_t_slab(n_perturbations, n_latent):
    """A user prior written inline: Bernoulli mask with a Student-t slab."""
    with plates(n_perturbations, n_latent):
        mask = pyro.sample("mask", dist.Bernoulli(0.2))  # [P, K]
        shift = pyro.sample("shift", dist.StudentT(3.0, 0.0, 2.0))  # [P, K]
    return mask * shift


spike_and_slab_sampled = functools.partial(PRIORS["spike_and_slab"], collapsed=False)
spike_and_slab_sampled.__name__ = "spike_and_slab_sampled"
beta_sampled = functools.partial(PRIORS["beta_spike_and_slab"], collapsed=False)
beta_sampled.__name__ = "beta_spike_and_slab_sampled"
ALL_PRIORS = sorted(PRIORS) + [student_t_slab, spike_and_slab_sampled, beta_sampled]


def _setup(prior, likelihood="nb", n_batches=0):
    pyro.set_rng_seed(0)
    layout = Layout(tuple(f"g{i}" for i in range(G)), tuple(f"p{i}" for i in range(P)),
                    tuple(f"b{i}" for i in range(n_batches)) if n_batches else None, (20,) * P)
    components = build(SVAEConfig(n_latent=K, n_hidden=8, n_layers=1, likelihood=likelihood), layout, prior)
    batch = {
        "library": torch.full((B,), 100.0),
        "perturbations": torch.randint(0, P + 1, (B, 1)),
        "batch": torch.randint(0, n_batches, (B,)) if n_batches else None,
        "counts": torch.poisson(torch.full((B, G), 3.0)),
    }
    return (*components.functions(), batch)


@pytest.mark.parametrize("prior", ALL_PRIORS, ids=lambda p: p if isinstance(p, str) else p.__name__)
def test_site_shapes_and_guide_mirrors_model(prior):
    model_fn, guide_fn, batch = _setup(prior)
    kw = dict(n_cells=100, cell_index=torch.arange(B), **batch)
    guide_trace = poutine.trace(guide_fn).get_trace(**kw)
    model_trace = poutine.trace(poutine.replay(model_fn, guide_trace)).get_trace(**kw)
    latent = [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
              and not s["name"] in ("cells", "perturbations", "latents")]
    guided = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample"
              and not s["name"] in ("cells", "perturbations", "latents")]
    assert latent == guided  # same sites, same order
    assert model_trace.nodes["z"]["value"].shape == (B, K)
    assert model_trace.nodes["counts"]["value"].shape == (B, G)
    for name in latent:
        if name in ("mask", "shift", "pi", "lam"):
            assert model_trace.nodes[name]["value"].shape == (P, K), name
    for name, site in guide_trace.nodes.items():  # guide parameters live in their own namespace
        if site["type"] == "param" and "$$$" not in name and name != "dispersion":
            assert name.startswith("PriorGuide."), name
    # the plate scale reaches both sides of the local site
    assert model_trace.nodes["z"]["scale"] == guide_trace.nodes["z"]["scale"] == 100 / B
    # every site has the same scale in model and guide (exact KLs take the guide's)
    for name in latent:
        model_scale, guide_scale = (torch.as_tensor(t.nodes[name]["scale"]) for t in (model_trace, guide_trace))
        assert torch.allclose(model_scale, guide_scale), name


@pytest.mark.parametrize("prior", ALL_PRIORS, ids=lambda p: p if isinstance(p, str) else p.__name__)
@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_one_svi_step_with_validation(prior, likelihood):
    model_fn, guide_fn, batch = _setup(prior, likelihood, n_batches=2)
    svi = SVI(model_fn, guide_fn, ClippedAdam({"lr": 1e-2}), TraceMeanField_ELBO())
    with pyro.validation_enabled(True):
        loss = svi.step(n_cells=100, cell_index=torch.arange(B), kl_weight=0.5, **batch)
    assert np.isfinite(loss)


@pytest.mark.parametrize("prior", ["spike_and_slab", "beta_spike_and_slab"])
def test_loss_decreases(prior):
    model_fn, guide_fn, batch = _setup(prior)
    svi = SVI(model_fn, guide_fn, ClippedAdam({"lr": 1e-2}), TraceMeanField_ELBO())
    losses = [svi.step(**batch) for _ in range(300)]
    assert np.mean(losses[-20:]) < np.mean(losses[:20]) - 0.1 * abs(np.mean(losses[:20]))


def test_model_simulates_counts_without_observations():
    model_fn, _, batch = _setup("spike_and_slab")
    batch["counts"] = None
    counts = model_fn(**batch)
    assert counts.shape == (B, G) and (counts >= 0).all() and torch.equal(counts, counts.round())


def test_cell_shifts_sum_combination_members():
    delta = torch.arange(P * K, dtype=torch.float).reshape(P, K)
    members = torch.tensor([[P, P], [1, P], [0, 2]])  # control, single, combination
    shifts = cell_shifts(delta, members)
    assert torch.equal(shifts[0], torch.zeros(K))
    assert torch.equal(shifts[1], delta[1])
    assert torch.equal(shifts[2], delta[0] + delta[2])


def test_straight_through_bernoulli_is_exact_and_has_gradient():
    logits = torch.zeros(1000, requires_grad=True)
    value = StraightThroughBernoulli(logits=logits).rsample()
    assert set(value.detach().unique().tolist()) <= {0.0, 1.0}
    value.sum().backward()
    assert torch.allclose(logits.grad, torch.full_like(logits, 0.25))
    kl = torch.distributions.kl_divergence(StraightThroughBernoulli(probs=torch.tensor(0.3)), dist.Bernoulli(0.1))
    expected = 0.3 * np.log(3) + 0.7 * np.log(0.7 / 0.9)
    assert kl.item() == pytest.approx(expected, rel=1e-5)


def test_guide_families_follow_the_prior():
    sites = {s.name: s for s in describe_prior(beta_sampled, P, K)}
    assert (sites["pi"].family, sites["mask"].family, sites["shift"].family) == ("delta", "prior", "normal")
    sites = {s.name: s for s in describe_prior(spike_and_slab_sampled, P, K)}
    assert (sites["mask"].family, sites["shift"].family) == ("bernoulli", "normal")
    sites = {s.name: s for s in describe_prior(resolve_prior("spike_and_slab"), P, K)}
    assert list(sites) == ["pi", "shift"]  # the mask is integrated out
    assert sites["pi"].params == {"values": "PriorGuide.values.pi"}
    assert sites["shift"].params == {"locs": "PriorGuide.locs.shift", "scales": "PriorGuide.scales.shift"}
    sites = {s.name: s for s in describe_prior(resolve_prior("horseshoe"), P, K)}
    assert sites["tau"].shape == () and sites["lam"].family == "normal" and sites["tau"].perturbation_axis is None
    assert sites["lam"].perturbation_axis == -2
    sites = {s.name: s for s in describe_prior(student_t_slab, P, K)}
    assert sites["mask"].family == "bernoulli"


def test_slab_of_the_guide_is_weighted_by_the_guides_own_inclusion_probability():
    model_fn, guide_fn, batch = _setup("spike_and_slab")
    guide_trace = poutine.trace(guide_fn).get_trace(**batch)
    pi = guide_trace.nodes["pi"]["value"]
    assert torch.equal(guide_trace.nodes["shift"]["scale"], pi)
    model_trace = poutine.trace(poutine.replay(model_fn, guide_trace)).get_trace(**batch)
    assert torch.equal(model_trace.nodes["shift"]["scale"], pi)


def test_inclusion_probability_density_is_minus_the_mask_kl():
    logits = torch.tensor([-3.0, 0.0, 2.0])
    a = torch.tensor([0.2, 0.5, 0.9])
    kl = torch.distributions.kl_divergence(dist.Bernoulli(probs=a), dist.Bernoulli(logits=logits))
    assert torch.allclose(InclusionProbability(logits).log_prob(a), -kl, atol=1e-6)
    assert torch.isfinite(InclusionProbability(logits).log_prob(torch.tensor([0.0, 1.0, 1.0]))).all()


def test_prior_with_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"shape \(4, 3\).*but got \(3, 4\)"):
        describe_prior(lambda p, k: torch.zeros(k, p), P, K)


def test_unknown_prior_lists_valid_names():
    with pytest.raises(ValueError, match="spike_and_slab"):
        resolve_prior("spikeslab")
    with pytest.raises(TypeError, match="does not take options"):
        resolve_prior("gaussian", sparsity=3.0)


def test_collapsed_mask_is_the_exact_expectation_of_the_sampled_mask():
    """E_mask[log p(z | mask * shift)] by enumerating all 2^(P K) masks equals the collapsed score."""
    import itertools

    p, k, b = 2, 2, 5
    torch.manual_seed(0)
    pi, shift, z = torch.rand(p, k), 3 * torch.randn(p, k), torch.randn(b, k)
    perturbations = torch.tensor([[0, p], [1, p], [0, 1], [p, p], [1, p]])  # singles, a combination, a control
    nets = Networks(G, k, n_hidden=4, n_layers=1)
    batch = dict(library=torch.full((b,), 50.0), perturbations=perturbations, counts=torch.ones(b, G))

    def z_score(prior, data):
        fn = functools.partial(model, nets=nets, prior=prior, n_perturbations=p)
        trace = poutine.trace(poutine.condition(fn, data={**data, "z": z})).get_trace(**batch)
        trace.compute_log_prob()
        return sum(trace.nodes[n]["log_prob_sum"] for n in ("z", "shift_variance") if n in trace.nodes)

    collapsed = z_score(PRIORS["beta_spike_and_slab"], {"pi": pi, "shift": shift})
    expected = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=p * k):
        mask = torch.tensor(bits).reshape(p, k)
        weight = torch.where(mask.bool(), pi, 1 - pi).prod()
        expected = expected + weight * z_score(beta_sampled, {"pi": pi, "shift": shift, "mask": mask})
    assert collapsed.item() == pytest.approx(expected.item(), rel=1e-5)


def test_min_shift_auto_is_a_quarter_of_the_typical_shift_with_a_floor():
    assert (MIN_SHIFT, AUTO_FRACTION) == (0.25, 0.25)
    assert resolve_min_shift("auto") == 0.25  # outside fit: no typical shift known
    assert resolve_min_shift("auto", 0.2) == 0.25  # a real screen, most perturbations without effect
    assert resolve_min_shift("auto", 1.5) == pytest.approx(0.375)
    assert resolve_min_shift("auto", 4.0) == 1.0
    assert resolve_min_shift(0.1, 4.0) == 0.1  # a number is kept as given
    for bad in (-1.0, "large", None):
        with pytest.raises(ValueError, match="min_shift"):
            resolve_min_shift(bad)


def test_spike_and_slab_with_thousands_of_cells_per_perturbation():
    """The prior odds of a target fall with the cells: with thousands they underflow float32."""
    from pyro_svae.factory import Layout, SVAEConfig, build, create_params
    from pyro_svae.runtime import flush_denormals, param_scope

    layout = Layout(tuple(f"g{i}" for i in range(G)), tuple(f"p{i}" for i in range(P)), None, (5000,) * P)
    with flush_denormals(True), pyro.validation_enabled(True):
        components = build(SVAEConfig(n_latent=K, n_hidden=8, n_layers=1), layout)
        with param_scope({}):
            create_params(components, "cpu")
            model_fn, guide_fn = components.functions()
            batch = {"library": torch.full((B,), 100.0), "perturbations": torch.randint(0, P + 1, (B, 1)),
                     "batch": None, "counts": torch.poisson(torch.full((B, G), 3.0))}
            assert np.isfinite(TraceMeanField_ELBO().loss(model_fn, guide_fn, **batch))


@pytest.mark.parametrize("sample_shape", [(), (3,)])
def test_negative_binomial_has_the_values_and_gradients_of_pyros(sample_shape):
    # lgamma(theta) is taken once per gene: the log-density and its gradients must stay exactly torch's
    from pyro_svae.likelihoods import NegativeBinomial

    torch.manual_seed(0)
    theta = torch.rand(13) * 20 + 0.1
    theta[0] = 0.0  # total_count 0 with a count 0: probability 1
    logits = torch.randn(*sample_shape, 7, 13)
    counts = torch.poisson(torch.rand(*sample_shape, 7, 13) * 3)
    counts[..., 0] = 0.0
    weights = torch.randn(*sample_shape, 7, 13)
    results = []
    for cls in (dist.NegativeBinomial, NegativeBinomial):
        t, lg = theta.clone().requires_grad_(), logits.clone().requires_grad_()
        log_prob = cls(total_count=t, logits=lg).log_prob(counts)
        (log_prob.nan_to_num(posinf=0.0, neginf=0.0) * weights).sum().backward()
        results.append((log_prob.detach(), t.grad, lg.grad))
    (expected, expected_theta, expected_logits), (got, got_theta, got_logits) = results
    assert torch.equal(got, expected) and got[..., 0].eq(0).all()
    assert torch.equal(got_logits, expected_logits)
    torch.testing.assert_close(got_theta[1:], expected_theta[1:], rtol=0, atol=0)
    assert isinstance(NegativeBinomial(theta[1:], logits=logits[..., 1:]).expand((2,) + logits[..., 1:].shape),
                      NegativeBinomial)
    # ... taken on the [1, G] tensor the per-gene theta was broadcast from, not on [B, G]
    from pyro_svae.likelihoods import _BroadcastLgamma

    broadcast = _BroadcastLgamma.apply(theta[1:].expand(1000, 12))
    assert broadcast.stride() == (0, 1) and torch.equal(broadcast[-1], torch.lgamma(theta[1:]))


def test_conjugate_encoder_is_its_factor_times_the_prior_normalised():
    torch.manual_seed(0)
    encoder = Encoder(6, 3, 8, 1, conjugate=True)
    counts, prior_loc = torch.poisson(torch.full((5, 6), 3.0)), 2.0 * torch.randn(5, 3)
    loc, scale = encoder(counts, None, prior_loc)
    h = encoder.body(torch.log1p(counts))
    mean, precision = encoder.loc(h), torch.nn.functional.softplus(encoder.scale(h))
    z = torch.linspace(-6.0, 6.0, 241)[:, None, None]
    product = dist.Normal(mean, precision.rsqrt()).log_prob(z) + dist.Normal(prior_loc, 1.0).log_prob(z)
    ratio = product - dist.Normal(loc, scale).log_prob(z)  # [241, 5, 3]: constant in z iff q is the product
    assert ratio.std(0).max() < 1e-3
    assert (scale < 1).all()  # never wider than the prior
    moved_loc, moved_scale = encoder(counts, None, prior_loc + 1.0)
    assert torch.allclose(moved_loc - loc, 1.0 / (precision + 1.0), atol=1e-5)
    assert torch.equal(moved_scale, scale)
    with pytest.raises(ValueError, match="prior_loc"):
        encoder(counts)


def test_encode_gives_each_cell_its_perturbations_shift_and_names_a_bad_encoder():
    nets = Networks(6, 2, 8, 1, encoder="conjugate")
    batch = {"counts": torch.ones(3, 6), "batch": None, "perturbations": torch.tensor([[0, 2], [1, 2], [2, 2]])}
    delta = torch.tensor([[10.0, 0.0], [0.0, -10.0]])  # [P=2, K]; code 2 pads (a control)
    loc = encode(nets, batch, delta).mean
    assert loc[0, 0] > loc[2, 0] + 1 and loc[1, 1] < loc[2, 1] - 1
    q = encode(nets, batch, delta[None].expand(4, 2, 2))
    assert (q.batch_shape, q.event_shape) == ((4, 3), (2,))  # one q per draw of the shifts
    with pytest.raises(ValueError, match="delta"):
        encode(nets, batch)
    counts_only = Networks(6, 2, 8, 1)
    assert torch.equal(encode(counts_only, batch, delta).mean, encode(counts_only, batch).mean)
    with pytest.raises(ValueError, match="encoder.*'counts', 'conjugate', 'full'.*'amortised'"):
        Networks(6, 2, 8, 1, encoder="amortised")


def test_full_covariance_encoder_starts_mean_field_and_learns_correlations():
    torch.manual_seed(0)
    nets = Networks(6, 3, 8, 1, encoder="full")
    batch = {"counts": torch.poisson(torch.full((5, 6), 3.0)), "batch": None, "perturbations": torch.zeros(5, 1).long()}
    q = encode(nets, batch)
    assert isinstance(q, dist.MultivariateNormal) and (q.batch_shape, q.event_shape) == ((5,), (3,))
    tril = q.scale_tril
    assert torch.equal(tril, torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1))) and (tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    target = dist.MultivariateNormal(torch.zeros(3), torch.tensor([[1.0, 0.8, 0.0], [0.8, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    optimizer = torch.optim.Adam(nets.encoder.parameters(), lr=0.02)
    for _ in range(300):  # fit q to a correlated Gaussian: only a full covariance can
        optimizer.zero_grad()
        torch.distributions.kl_divergence(encode(nets, batch), target).sum().backward()
        optimizer.step()
    covariance = encode(nets, batch).covariance_matrix
    assert torch.allclose(covariance, target.covariance_matrix.expand(5, 3, 3), atol=0.05)


def test_registered_kl_of_a_full_covariance_q_to_a_diagonal_prior_is_the_mvn_kl():
    torch.manual_seed(0)
    tril = torch.randn(4, 3, 3).tril()
    tril.diagonal(dim1=-2, dim2=-1).copy_(torch.rand(4, 3) + 0.3)
    q = dist.MultivariateNormal(torch.randn(4, 3), scale_tril=tril)
    prior = dist.Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.5).to_event(1)
    as_mvn = dist.MultivariateNormal(prior.base_dist.loc, scale_tril=torch.diag_embed(prior.base_dist.scale))
    kl = torch.distributions.kl_divergence(q, prior)
    assert kl.shape == (4,) and torch.allclose(kl, torch.distributions.kl_divergence(q, as_mvn), rtol=1e-5)
    with pytest.raises(NotImplementedError):
        torch.distributions.kl_divergence(q, dist.Laplace(torch.zeros(4, 3), 1.0).to_event(1))
