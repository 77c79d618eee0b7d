"""Gene programs, perturbation effects and enrichment: what the latents mean in gene space."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_svae import interpretation, metrics
from pyro_svae.datasets.simulation import true_log_mean


def test_gene_programs_are_the_decoders_jacobian(fitted):
    model, adata = fitted
    cells = adata[:40]
    programs = model.gene_programs(cells)
    assert programs.shape == (model.config.n_latent, adata.n_vars)
    assert list(programs.columns) == list(adata.var_names)
    with model.scope(), torch.no_grad():
        z = model.nets.encoder(torch.as_tensor(np.asarray(cells.X)), None)[0].double()
        decoder = copy.deepcopy(model.nets.decoder).double()  # central differences in float64: no rounding
        eps, columns = 1e-5, []
        for k in range(model.config.n_latent):
            step = torch.zeros_like(z)
            step[:, k] = eps
            up, down = decoder(z + step)[0], decoder(z - step)[0]
            columns.append(((up - down) / (2 * eps)).mean(0).numpy())
    assert np.allclose(programs.to_numpy(), np.stack(columns), atol=2e-3)


def test_top_genes_are_sorted_by_size_with_their_sign():
    programs = pd.DataFrame([[0.1, -3.0, 2.0, 0.0]], columns=["a", "b", "c", "d"])
    top = interpretation.top_genes(programs, 0, n=2)
    assert list(top["gene"]) == ["b", "c"] and list(top["direction"]) == ["down", "up"]
    with pytest.raises(KeyError, match="latent=5"):
        interpretation.top_genes(programs, 5)


def test_perturbation_effects_are_a_long_table_with_intervals(fitted):
    model, adata = fitted
    effects = model.perturbation_effects(["p0", "p0+p1"], num_samples=50, n_cells=50, seed=0)
    assert list(effects.columns) == ["perturbation", "gene", "lfc", "lower", "upper"]
    assert len(effects) == 2 * adata.n_vars
    assert (effects["lower"] <= effects["upper"]).all()
    assert ((effects["lower"] <= effects["lfc"] + 1e-9) & (effects["lfc"] <= effects["upper"] + 1e-9)).mean() > 0.95
    again = model.perturbation_effects(["p0", "p0+p1"], num_samples=50, n_cells=50, seed=0)
    assert np.array_equal(effects["lfc"], again["lfc"])  # seeded
    control = model.perturbation_effects(["control"], num_samples=20, n_cells=20, seed=0)
    assert np.allclose(control["lfc"], 0.0)  # controls against controls: no change
    with pytest.raises(ValueError, match="transfer"):
        model.perturbation_effects(["nope"])


def test_enrichment_ulm_by_hand():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(60)]
    programs = pd.DataFrame(rng.normal(size=(2, 60)), columns=genes)
    programs.iloc[1, :10] += 2.0  # latent 1 drives the first ten genes up
    scores, pvalues = interpretation.enrichment(programs, {"first": genes[:10], "small": genes[:3]},
                                                use_decoupler=False)
    assert list(scores.columns) == ["first"]  # "small" has fewer than 5 genes
    x = np.r_[np.ones(10), np.zeros(50)]
    slope = np.polyfit(x, programs.iloc[1].to_numpy(), 1)[0]
    residual = programs.iloc[1].to_numpy() - np.polyval(np.polyfit(x, programs.iloc[1].to_numpy(), 1), x)
    se = np.sqrt(residual @ residual / 58 / ((x - x.mean()) @ (x - x.mean())))
    assert scores.loc[1, "first"] == pytest.approx(slope / se, rel=1e-6)
    assert pvalues.loc[1, "first"] < 1e-4 < pvalues.loc[0, "first"]


def test_enrichment_matches_decoupler():
    pytest.importorskip("decoupler")
    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(80)]
    programs = pd.DataFrame(rng.normal(size=(3, 80)), columns=genes, index=["0", "1", "2"])
    sets = {"a": genes[:12], "b": genes[30:45]}
    ours, _ = interpretation.enrichment(programs, sets, use_decoupler=False)
    theirs, _ = interpretation.enrichment(programs, sets, use_decoupler=True)
    assert np.allclose(ours.to_numpy(), theirs.loc[ours.index, ours.columns].to_numpy(), atol=1e-5)


def test_enrichment_rejects_bad_gene_sets():
    with pytest.raises(TypeError, match="dict"):
        interpretation.enrichment(pd.DataFrame([[0.0]]), ["a"])
    with pytest.raises(KeyError, match="source"):
        interpretation.enrichment(pd.DataFrame([[0.0]]), pd.DataFrame({"target": ["a"]}))


# ---- against the simulator's truth (slow) --------------------------------------------------------
def _true_jacobian(adata, eps: float = 1e-3) -> np.ndarray:
    """Mean over cells of d log softmax_g / d z_k of the simulator's decoder: ``[K_true, G]``."""
    z = adata.obsm["z_true"].astype(float)
    out = []
    for k in range(z.shape[1]):
        step = np.zeros_like(z)
        step[:, k] = eps
        out.append(((true_log_mean(adata, z + step) - true_log_mean(adata, z - step)) / (2 * eps)).mean(0))
    return np.stack(out)


@pytest.mark.slow
def test_gene_programs_of_recovered_latents_follow_the_true_decoder(demo_fits):
    adata, fits = demo_fits
    model = fits["spike_and_slab"]
    latent = model.get_latent(adata)
    matching = metrics.match_latents(latent, adata.obsm["z_true"])
    truth = _true_jacobian(adata)
    programs = model.gene_programs(adata).to_numpy()
    for learned, true in zip(matching.learned_index, matching.true_index):
        sign = np.sign(np.corrcoef(latent[:, learned], adata.obsm["z_true"][:, true])[0, 1])
        r = np.corrcoef(sign * programs[learned], truth[true])[0, 1]
        assert r >= 0.85, (learned, true, r)


@pytest.mark.slow
def test_perturbation_effects_follow_the_observed_pseudobulk_change(demo_fits):
    adata, fits = demo_fits
    model = fits["spike_and_slab"]
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    counts = np.asarray(adata.X, float)
    proportions = counts / counts.sum(1, keepdims=True)
    control = np.log2(proportions[labels == "control"].mean(0))
    effects = model.perturbation_effects(num_samples=100, n_cells=300, seed=0)
    rs = []
    for p in model.perturbation_names:
        observed = np.log2(proportions[labels == p].mean(0)) - control
        predicted = effects.loc[effects["perturbation"] == p, "lfc"].to_numpy()
        rs.append(np.corrcoef(observed, predicted)[0, 1])
    assert np.median(rs) >= 0.9, np.round(rs, 3)
