"""Posterior predictive checks, the ArviZ export, writing results into AnnData, and their plots."""

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import arviz as az
import matplotlib.pyplot as plt
from matplotlib.collections import PolyCollection
import numpy as np
import pandas as pd
import pyro
import pytest

from pyro_svae import pl
from pyro_svae.predictive import STATISTICS, ppc_summary

from .conftest import adata_equal


# ---- replicated counts -------------------------------------------------------------------
def test_posterior_predictive_shapes_and_counts(fitted):
    model, adata = fitted
    replicated = model.posterior_predictive(num_samples=7)
    assert replicated.shape == (7, adata.n_obs, adata.n_vars) and replicated.dtype == np.int32
    assert replicated.min() >= 0
    # draws differ between samples (z and counts are sampled), as replicated data should
    assert not np.array_equal(replicated[0], replicated[1])


def test_gene_and_cell_selection_equals_slicing(fitted):
    model, adata = fitted
    genes, cells = [adata.var_names[3], adata.var_names[0]], np.arange(5, 40)
    pyro.set_rng_seed(3)
    full = model.posterior_predictive(num_samples=4, cells=cells)
    pyro.set_rng_seed(3)
    subset = model.posterior_predictive(num_samples=4, cells=cells, genes=genes)
    assert np.array_equal(subset, full[:, :, [3, 0]])
    mask = np.zeros(adata.n_obs, bool)
    mask[cells] = True
    pyro.set_rng_seed(3)
    assert np.array_equal(model.posterior_predictive(num_samples=4, cells=mask), full)


def test_small_minibatches_cover_every_cell(fitted):
    model, adata = fitted
    pyro.set_rng_seed(0)
    replicated = model.posterior_predictive(num_samples=50, batch_size=16)
    observed = np.asarray(adata.X)
    # each cell's replicated library tracks its observed library (the model conditions on it)
    ratio = replicated.sum(2).mean(0) / observed.sum(1)
    assert np.all((ratio > 0.5) & (ratio < 2.0))


def test_posterior_predictive_rejects_bad_selections(fitted):
    model, _ = fitted
    with pytest.raises(KeyError, match="genes not found"):
        model.posterior_predictive(num_samples=2, genes=["no_such_gene"])
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        model.posterior_predictive(num_samples=0)
    with pytest.raises(ValueError, match="boolean cells mask must have length"):
        model.posterior_predictive(num_samples=2, cells=np.ones(3, bool))


# ---- summary statistics --------------------------------------------------------------------
def test_summary_statistics_by_hand():
    observed = np.array([[0, 2], [4, 0], [2, 2], [0, 6]], dtype=float)
    labels = ["control", "control", "A", "A"]
    replicated = np.stack([observed, observed + 1, observed * 2])
    summary = ppc_summary(observed, replicated, labels, "control", ["g0", "g1"], list("abcd"), interval=0.5)
    assert list(summary["statistic"].unique()) == list(STATISTICS)
    mean = summary[summary["statistic"] == "gene_mean"].set_index("gene")
    assert mean.loc["g0", "observed"] == 1.5 and mean.loc["g1", "observed"] == 2.5
    assert mean.loc["g0", "predicted"] == 2.5  # median of 1.5, 2.5, 3.0
    zeros = summary[summary["statistic"] == "gene_zero_fraction"].set_index("gene")
    assert zeros.loc["g0", "observed"] == 0.5 and zeros.loc["g0", "lower"] == 0.25  # quantile 0.25 of 0.5, 0, 0.5
    library = summary[summary["statistic"] == "cell_library_size"].set_index("cell")
    assert library.loc["d", "observed"] == 6 and library.loc["d", "perturbation"] == "A"
    shift = summary[summary["statistic"] == "perturbation_shift"].set_index("gene")
    assert set(shift["perturbation"]) == {"A"}
    expression = np.log1p(1e4 * observed / observed.sum(1, keepdims=True))
    assert np.allclose(shift["observed"], expression[2:].mean(0) - expression[:2].mean(0))
    assert summary["inside"].dtype == bool


def test_summary_covers_data_replicated_from_themselves():
    rng = np.random.default_rng(0)
    replicated = rng.poisson(3.0, size=(200, 60, 5))
    summary = ppc_summary(replicated[0], replicated[1:], interval=0.9)
    coverage = summary.groupby("statistic")["inside"].mean()
    assert coverage["gene_mean"] >= 0.6 and coverage["cell_library_size"] >= 0.8


def test_summary_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"replicated must have shape \(num_samples, 3, 2\)"):
        ppc_summary(np.zeros((3, 2)), np.zeros((5, 3, 3)))


def test_model_summary_has_every_statistic(fitted):
    model, adata = fitted
    summary = model.ppc_summary(num_samples=10)
    counts = summary["statistic"].value_counts()
    assert counts["gene_mean"] == adata.n_vars and counts["cell_library_size"] == adata.n_obs
    n_perturbed = adata.obs["perturbation"].nunique() - 1
    assert counts["perturbation_shift"] == n_perturbed * adata.n_vars
    assert summary[["observed", "lower", "predicted", "upper"]].notna().all().all()
    assert (summary["lower"] <= summary["upper"]).all()


# ---- ArviZ ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def idata(fitted):
    model, adata = fitted
    return model.to_arviz(num_samples=100, cells=np.arange(50), genes=adata.var_names[:10], log_likelihood=True, seed=0)


def test_inference_data_groups_dims_and_coords(fitted, idata):
    model, adata = fitted
    for group in ("posterior", "posterior_predictive", "log_likelihood", "observed_data", "constant_data"):
        assert group in idata.groups()
    assert idata.posterior["delta"].dims == ("chain", "draw", "perturbation", "latent")
    assert list(idata.posterior["perturbation"].values) == list(model.perturbation_names)
    assert idata.posterior["z"].shape == (1, 100, 50, model.config.n_latent)
    assert idata.posterior_predictive["counts"].dims == ("chain", "draw", "cell", "gene")
    assert list(idata.observed_data["gene"].values) == list(adata.var_names[:10])
    assert list(idata.observed_data["cell"].values) == list(adata.obs_names[:50])
    assert np.array_equal(idata.observed_data["counts"].values, np.asarray(adata.X)[:50, :10])
    assert idata.log_likelihood["counts"].dims == ("chain", "draw", "cell")
    assert list(idata.constant_data["perturbation_label"].values) == list(adata.obs["perturbation"][:50])
    # spike_and_slab reports inclusion probabilities; the effective shift is pi * shift
    posterior = idata.posterior
    assert np.allclose(posterior["delta"], posterior["inclusion"] * posterior["shift"], atol=1e-6)


def test_log_likelihood_group_only_when_asked(fitted):
    model, _ = fitted
    assert "log_likelihood" not in model.to_arviz(num_samples=3, cells=np.arange(5)).groups()


def test_arviz_ppc_plot_and_loo_run(idata):
    axes = az.plot_ppc(idata, data_pairs={"counts": "counts"}, num_pp_samples=5, random_seed=0)
    artists = np.atleast_1d(axes)[0]
    assert len(artists.get_lines()) + len(artists.patches) > 0
    plt.close("all")
    loo = az.loo(idata, pointwise=True)
    assert np.isfinite(loo["elpd_loo"])
    # the cell's latent is integrated out, so the draws differ only in the global sites: usable k
    # (control cells do not depend on the global sites at all: their k is undefined)
    k = np.asarray(loo.pareto_k)
    assert np.isfinite(k).sum() > 30 and (k[np.isfinite(k)] < 0.7).mean() > 0.9


def test_log_likelihood_integrates_the_latent_out(fitted, idata):
    """Per draw of the global sites, log p(x_i | g) by importance sampling: the IWELBO's value."""
    model, adata = fitted
    values = idata.log_likelihood["counts"].values
    assert values.shape == (1, 100, 50) and np.all(values < 0) and np.all(np.isfinite(values))
    iwelbo = model.marginal_log_likelihood(adata[:50], n_samples=100, seed=0)
    assert values.mean() == pytest.approx(iwelbo, abs=1.0)


# ---- writing into AnnData --------------------------------------------------------------------
def test_write_puts_latents_and_targets_and_round_trips(fitted, tmp_path):
    model, adata = fitted
    original = adata.copy()
    written = model.write(adata, copy=True)
    assert adata_equal(adata, original) and "X_svae" not in adata.obsm  # copy=True leaves adata alone
    assert written.obsm["X_svae"].shape == (adata.n_obs, model.config.n_latent)
    assert np.allclose(written.obsm["X_svae"], model.get_latent(adata))
    uns = written.uns["svae"]
    assert list(uns["perturbation_names"]) == list(model.perturbation_names)
    assert uns["inclusion_probabilities"].shape == uns["shifts"].shape == (len(model.perturbation_names), 3)
    assert uns["params"]["prior"] == "spike_and_slab"
    written.write_h5ad(tmp_path / "screen.h5ad")
    back = ad.read_h5ad(tmp_path / "screen.h5ad")
    assert np.allclose(back.obsm["X_svae"], written.obsm["X_svae"])
    assert np.allclose(back.uns["svae"]["shifts"], uns["shifts"])
    assert np.array_equal(np.asarray(back.X), np.asarray(adata.X))
    copy = adata.copy()
    assert model.write(copy) is None and "X_svae" in copy.obsm and np.array_equal(np.asarray(copy.X), np.asarray(adata.X))


# ---- plots -----------------------------------------------------------------------------------
def test_ppc_plot_draws_points_intervals_and_diagonal(fitted):
    model, adata = fitted
    summary = model.ppc_summary(num_samples=10)
    axes = pl.ppc(summary)
    assert len(axes) == 3
    for ax, statistic in zip(axes, ("gene_mean", "gene_variance", "gene_zero_fraction")):
        rows = summary[summary["statistic"] == statistic]
        points = [c for c in ax.collections if c.get_offsets().shape[0] == len(rows) and c.__class__.__name__ == "PathCollection"]
        assert len(points) == 1 and np.allclose(points[0].get_offsets()[:, 0], rows["observed"])
        assert any(c.__class__.__name__ == "LineCollection" for c in ax.collections)  # the intervals
        assert [line.get_label() for line in ax.get_lines()] == ["observed = predicted"]
        assert f"{rows['inside'].mean():.0%} inside" in ax.get_title()
    assert axes[0].get_xscale() == "log" and axes[2].get_xscale() == "linear"
    plt.close("all")


def test_ppc_plot_from_inference_data_and_given_axes(idata):
    fig, axes = plt.subplots(1, 2)
    out = pl.ppc(idata, statistics=("gene_mean", "gene_zero_fraction"), ax=axes)
    assert list(out) == list(axes)
    assert out[0].collections[-1].get_offsets().shape[0] == 10  # one point per gene
    with pytest.raises(ValueError, match="Expected 3 axes"):
        pl.ppc(idata, ax=axes)
    plt.close(fig)


def test_latent_plot_shows_control_and_the_perturbations_shifting_each_latent(fitted):
    model, adata = fitted
    written = model.write(adata, copy=True)
    axes = pl.latent(model, written, n_perturbations=2, min_shift=0.0)
    assert len(axes) == model.config.n_latent
    shifts = pd.DataFrame(written.uns["svae"]["shifts"], index=list(written.uns["svae"]["perturbation_names"]))
    for k, ax in enumerate(axes):
        expected = ["control"] + list(shifts[k].abs().sort_values(ascending=False).index[:2])
        assert [t.get_text() for t in ax.get_yticklabels()] == expected
        assert ax.get_title().startswith(f"latent {k}")
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3  # one violin each
    plt.close("all")
    axes = pl.latent(model, written, min_shift=1e9)  # nothing shifts that much: controls only, said so
    assert all("no shifted perturbation" in ax.get_title() for ax in axes)
    plt.close("all")


# ---- calibration on the simulator (slow) -------------------------------------------------------
@pytest.mark.slow
def test_posterior_predictive_is_calibrated_on_the_simulator(demo_fits):
    """Zero fraction per gene within 0.03 on average, mean library size within 5%."""
    adata, fits = demo_fits
    pyro.set_rng_seed(0)
    summary = fits["spike_and_slab"].ppc_summary(num_samples=50)
    zeros = summary[summary["statistic"] == "gene_zero_fraction"]
    assert np.mean(np.abs(zeros["observed"] - zeros["predicted"])) < 0.03
    library = summary[summary["statistic"] == "cell_library_size"]
    assert abs(library["predicted"].mean() / library["observed"].mean() - 1) < 0.05


def test_demo_writes_its_figures(tmp_path, capsys, monkeypatch):
    from pyro_svae import demo

    seeds = []
    fit = demo.fit
    monkeypatch.setattr(demo, "fit", lambda *args, **kwargs: seeds.append(kwargs["seed"]) or fit(*args, **kwargs))
    results = demo.main(["--out", str(tmp_path), "--priors", "spike_and_slab", "--max-epochs", "2", "--seed", "3"])
    assert seeds == [3]  # --seed reaches the fit
    assert set(results) == {"spike_and_slab"} and np.isfinite(results["spike_and_slab"]["mcc"])
    assert (tmp_path / "spike_and_slab.png").stat().st_size > 10_000
    assert (tmp_path / "posterior_predictive.png").stat().st_size > 10_000
    assert "zero fraction per gene off by" in capsys.readouterr().out


def test_from_dict_adapter_uses_the_call_form_of_each_arviz_major(monkeypatch):
    from pyro_svae import inference_data

    calls = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))

    monkeypatch.setattr(az, "from_dict", record)
    groups, coords, dims = {"posterior": {"a": np.zeros((1, 2))}}, {"c": [0]}, {"a": ["c"]}
    monkeypatch.setattr(az, "__version__", "1.0.0")
    inference_data.from_dict(groups, coords, dims)
    monkeypatch.setattr(az, "__version__", "0.23.4")
    inference_data.from_dict(groups, coords, dims)
    assert calls[0] == ((groups,), {"coords": coords, "dims": dims})  # 1.x: one dict of groups
    assert calls[1] == ((), {"posterior": groups["posterior"], "coords": coords, "dims": dims})  # 0.x: keywords


def test_per_cell_quantities_are_the_same_in_any_minibatch_size(fitted):
    # written batch by batch into one array: every cell in its place, with the values' dtype
    import torch

    from pyro_svae.runtime import per_cell

    model, adata = fitted
    whole = model.get_latent(adata, batch_size=adata.n_obs)
    latent = model.get_latent(adata, batch_size=7)
    assert latent.shape == (adata.n_obs, model.config.n_latent) and latent.dtype == np.float32
    np.testing.assert_allclose(latent, whole, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = model.nets.encoder(torch.as_tensor(np.asarray(adata.X[-3:], dtype=np.float32)))[0]
    np.testing.assert_allclose(latent[-3:], expected.numpy(), rtol=1e-5, atol=1e-6)
    batches = [(np.array([2, 0]), torch.tensor([[2.0, 20.0], [0.0, 0.0]], dtype=torch.float64)),
               (np.array([1]), torch.tensor([[1.0, 10.0]], dtype=torch.float64))]
    out = per_cell(iter(batches), 3, lambda values: values)
    assert out.dtype == np.float64 and np.array_equal(out, [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]])
