"""The posterior under the simulator's own model: the bound on what any fit's latents can reach."""

import numpy as np
import pytest

from pyro_svae import metrics
from pyro_svae.datasets import simulate
from pyro_svae.datasets.oracle import true_elbo, true_posterior, true_prior_mean

SMALL = dict(n_perturbations=6, n_latent=3, n_genes=40, n_cells_per_perturbation=40, n_control=60, max_targets=1,
             shift_size=3.0, decoder_layers=2, n_hidden=16)


def test_prior_mean_follows_labels_and_combinations():
    adata = simulate(**SMALL, n_combinations=2, interaction=0.5, seed=0)
    mean = true_prior_mean(adata)
    names = list(adata.uns["perturbation_names"])
    labels = np.asarray(adata.obs["perturbation"]).astype(str)
    assert mean.shape == (adata.n_obs, 3)
    np.testing.assert_array_equal(mean[labels == "control"], 0.0)
    first = labels == names[0]
    np.testing.assert_allclose(mean[first], np.broadcast_to(adata.uns["true_shifts"][0], mean[first].shape), atol=1e-6)
    pair = str(adata.uns["combinations"][0])
    a, b = pair.split("+")
    expected = (adata.uns["true_shifts"][names.index(a)] + adata.uns["true_shifts"][names.index(b)]
                + adata.uns["interaction_shifts"][0])
    np.testing.assert_allclose(mean[labels == pair][0], expected, atol=1e-5)


def test_without_counts_the_posterior_is_the_prior():
    # a library of ~0.001 counts: the data say nothing, so the posterior mean is the label's shift
    adata = simulate(**SMALL, library_size=1e-3, seed=1)
    posterior = true_posterior(adata, n_samples=256, map_steps=200)
    error = np.abs(posterior.mean - true_prior_mean(adata))  # Monte Carlo error only: ~1/sqrt(ESS)
    assert error.mean() < 0.06 and error.max() < 0.4
    empty = np.asarray(adata.X).sum(1) == 0  # (one cell of the screen has a count)
    assert empty.mean() > 0.9
    np.testing.assert_allclose(posterior.map[empty], true_prior_mean(adata)[empty], atol=0.02)


@pytest.mark.parametrize("dispersion", [10.0, None])
def test_deep_counts_pin_the_latents_beyond_the_label(dispersion):
    adata = simulate(**SMALL, library_size=20000.0, dispersion=dispersion, seed=2)
    before = adata.copy()
    posterior = true_posterior(adata, n_samples=128, map_steps=300)
    z = adata.obsm["z_true"]
    label_only = metrics.mcc(true_prior_mean(adata) + 1e-9 * np.random.default_rng(0).normal(size=z.shape), z)
    oracle = metrics.mcc(posterior.mean, z)
    assert oracle > 0.95 > label_only + 0.05
    assert oracle >= metrics.mcc(posterior.map, z) - 0.01  # the posterior mean is the better estimate
    assert posterior.ess.shape == (adata.n_obs,) and np.all((posterior.ess >= 1 - 1e-6) & (posterior.ess <= 128 + 1e-6))
    np.testing.assert_array_equal(adata.X, before.X)  # the user's data untouched
    assert list(adata.obs.columns) == list(before.obs.columns)


def test_simulate_records_the_truth_the_posterior_needs():
    adata = simulate(**SMALL, dispersion=None, seed=0)
    assert np.isinf(adata.uns["true_dispersion"])
    assert simulate(**SMALL, dispersion=7.0, seed=0).uns["true_dispersion"] == 7.0
    library = np.asarray(adata.obs["true_library"])
    assert library.shape == (adata.n_obs,) and np.all(library > 0)
    # counts are drawn around the library: their totals track it
    assert np.corrcoef(np.log(library), np.log(np.asarray(adata.X).sum(1) + 1))[0, 1] > 0.5


def test_missing_truth_and_bad_arguments_are_named():
    adata = simulate(**SMALL, seed=0)
    del adata.uns["true_dispersion"]
    with pytest.raises(KeyError, match=r"uns\['true_dispersion'\]"):
        true_posterior(adata)
    adata = simulate(**SMALL, seed=0)
    del adata.obs["true_library"]
    with pytest.raises(KeyError, match=r"obs\['true_library'\]"):
        true_posterior(adata)
    with pytest.raises(ValueError, match="widen >= 1"):
        true_posterior(simulate(**SMALL, seed=0), widen=0.5)
    with pytest.raises(ValueError, match="0 <= defensive < 1.*1.0"):
        true_posterior(simulate(**SMALL, seed=0), defensive=1.0)
    with pytest.raises(ValueError, match="library to be 'true' or 'observed'.*'total'"):
        true_posterior(simulate(**SMALL, seed=0), library="total")


@pytest.mark.parametrize("dispersion, library", [(5.0, "true"), (None, "observed")])  # NB and Poisson, both libraries
def test_log_evidence_matches_brute_force(dispersion, library):
    # two latents and a shallow library: averaging p(x | z) over 200,000 prior draws is exact enough
    import torch

    from pyro_svae.datasets.oracle import _TrueModel

    adata = simulate(**{**SMALL, "n_latent": 2, "n_genes": 20}, library_size=60.0, dispersion=dispersion, seed=3)[:25].copy()
    posterior = true_posterior(adata, n_samples=2048, map_steps=300, library=library)
    true_model = _TrueModel(adata)
    counts = torch.as_tensor(np.asarray(adata.X, float))
    log_library = (torch.as_tensor(np.log(np.asarray(adata.obs["true_library"], float))) if library == "true"
                   else counts.sum(-1).clamp(min=1.0).log())
    prior_mean = torch.as_tensor(true_prior_mean(adata))
    z = prior_mean + torch.randn((200_000,) + prior_mean.shape, generator=torch.Generator().manual_seed(0),
                                 dtype=prior_mean.dtype)  # [S, n, 2]
    # log_joint includes the prior's exp(-|z - m|^2 / 2); take it out to average the likelihood alone
    log_lik = (true_model.log_joint(z, counts, log_library, prior_mean) + 0.5 * ((z - prior_mean) ** 2).sum(-1)
               + true_model.log_constant(counts))
    brute = (torch.logsumexp(log_lik, 0) - np.log(z.shape[0])).numpy()
    # Monte Carlo error of both; a missing normaliser would be off by nats
    np.testing.assert_allclose(posterior.log_evidence, brute, atol=0.2)
    assert np.abs(posterior.log_evidence - brute).mean() < 0.03
    assert np.all(np.isfinite(posterior.log_evidence)) and np.all(posterior.log_evidence < 0)


def test_true_elbo_is_the_evidence_where_the_posterior_is_gaussian_and_below_it_elsewhere():
    # Poisson cells without a count: p(x = 0 | z) = exp(-library) whatever z, so the posterior is the
    # prior N(shift, I), a mean-field Gaussian, and the best ELBO is the log evidence, -library, exactly
    empty = simulate(**SMALL, library_size=1e-3, dispersion=None, seed=1)
    empty = empty[np.asarray(empty.X).sum(1) == 0][:40].copy()
    np.testing.assert_allclose(true_elbo(empty, steps=100, library="true"), -empty.obs["true_library"], atol=1e-4)
    adata = simulate(**{**SMALL, "n_latent": 2, "n_genes": 20}, library_size=60.0, dispersion=5.0, seed=3)[:25].copy()
    evidence = true_posterior(adata, n_samples=2048, map_steps=300, library="observed").log_evidence
    elbo, start = true_elbo(adata), true_elbo(adata, steps=0)
    assert elbo.shape == (25,) and np.all(elbo < evidence + 0.2)  # Jensen, up to the Monte Carlo error of both
    assert -0.05 < np.mean(evidence - elbo) < 0.5 and np.mean(elbo - start) > 0.02  # the optimiser improves on its start
    full = true_elbo(adata, covariance="full")  # a wider family: no lower, and still below the evidence
    assert np.mean(full - elbo) > -0.01 and np.all(full < evidence + 0.2)
    with pytest.raises(ValueError, match="n_draws, n_eval, chunk >= 1.*0"):
        true_elbo(adata, n_draws=0)
    with pytest.raises(ValueError, match="covariance to be 'diagonal' or 'full'.*'low_rank'"):
        true_elbo(adata, covariance="low_rank")


@pytest.mark.parametrize("activation,bias", [("leaky_relu", 1.0), ("softplus", 0.0), ("tanh", 0.5)])
def test_other_simulated_decoders_keep_the_screen_and_are_read_back(activation, bias):
    import torch

    from pyro_svae.datasets.oracle import _TrueModel
    from pyro_svae.datasets.simulation import decode, decoder_of, true_log_mean

    deep = dict(SMALL, library_size=1e6, dispersion=None)
    grid_decoder, adata = simulate(**deep, seed=3), simulate(**deep, decoder_activation=activation,
                                                             decoder_bias=bias, seed=3)
    # targets, shifts and cell latents are drawn before the decoder: the same screen, other genes' responses
    # (the counts draw a varying number of numbers, so the cells come in another order)
    np.testing.assert_array_equal(adata.uns["true_targets"], grid_decoder.uns["true_targets"])
    rows = (lambda z: z[np.lexsort(z.T)])  # noqa: E731
    np.testing.assert_array_equal(rows(adata.obsm["z_true"]), rows(grid_decoder.obsm["z_true"]))
    assert not np.array_equal(adata.X, grid_decoder.X)
    decoder = adata.uns["true_decoder"]
    assert decoder["activation"] == activation and ("b0" in decoder) == (bias > 0)
    # the nonlinearity acts on the latents' range: unit-sd pre-activations in the first hidden layer,
    # and each gene's logit centred over the cells
    first = adata.obsm["z_true"].astype(float) @ decoder["w0"]
    np.testing.assert_allclose(first.std(axis=0), 1.0, rtol=1e-6)
    logits = decode(adata.obsm["z_true"].astype(float), **decoder_of(adata))
    np.testing.assert_allclose(logits.mean(axis=0), 0.0, atol=1e-5 * np.abs(logits).max())
    # the recorded decoder is the one the counts were drawn from: at ~1e6 counts per cell the observed
    # log proportions are its own, and reading it with the grid's nonlinearity misses them
    z, counts = adata.obsm["z_true"], np.asarray(adata.X, float)
    observed = np.log(counts + 0.5) - np.log(adata.obs["true_library"].to_numpy())[:, None]
    error = np.abs(observed - true_log_mean(adata, z))[counts > 1000].mean()
    wrong = adata.copy()
    wrong.uns["true_decoder"] = {**decoder, "activation": "softplus" if activation != "softplus" else "tanh"}
    assert error < 0.02 < np.abs(observed - true_log_mean(wrong, z))[counts > 1000].mean()
    # the oracle decodes with it too (torch), as the simulator does (NumPy)
    as_torch = decoder_of(adata, convert=lambda a: torch.as_tensor(a, dtype=torch.float64))
    np.testing.assert_allclose(decode(torch.as_tensor(z, dtype=torch.float64), **as_torch).numpy(),
                               decode(z.astype(float), **decoder_of(adata)), rtol=1e-9, atol=1e-9)
    model = _TrueModel(adata)
    log_mu = torch.as_tensor(true_log_mean(adata, z, adata.obs["true_library"].to_numpy()))
    expected = (torch.as_tensor(counts) * log_mu - log_mu.exp()).sum(-1)
    z64 = torch.as_tensor(z, dtype=torch.float64)
    got = model.log_joint(z64, torch.as_tensor(counts), torch.as_tensor(np.log(adata.obs["true_library"].to_numpy())),
                          z64)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-9)


def test_simulated_decoder_options_are_checked():
    with pytest.raises(ValueError, match=r"decoder_activation.*'leaky_relu'.*but got 'relu'"):
        simulate(**SMALL, decoder_activation="relu")
    with pytest.raises(ValueError, match=r"decoder_bias >= 0, but got -1"):
        simulate(**SMALL, decoder_bias=-1.0)
    # the defaults are the grid's decoder, draw for draw
    np.testing.assert_array_equal(simulate(**SMALL, seed=4).X,
                                  simulate(**SMALL, decoder_activation="leaky_relu", decoder_bias=0.0, seed=4).X)
