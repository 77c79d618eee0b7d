"""Loaders of public screens: the Papalexi file in ../shared/data (skipped when absent) and the
Replogle layout, tested on a simulated screen written in that layout."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pyro_svae
from pyro_svae.datasets import papalexi2021, replogle2022, simulate
from pyro_svae.loaders import highly_variable_genes

from .conftest import FAST

PAPALEXI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "papalexi2021_lowmoi.h5ad"
needs_papalexi = pytest.mark.skipif(not PAPALEXI.is_file(), reason="../shared/data/papalexi2021_lowmoi.h5ad is absent")


@needs_papalexi
def test_papalexi_filters_guides_and_small_perturbations():
    full = papalexi2021(PAPALEXI)
    assert full.shape == (20729, 299) and sp.issparse(full.X)
    assert (full.obs["perturbation"] == "control").sum() == 2386
    filtered = papalexi2021(PAPALEXI, min_guide_fraction=0.8, min_cells=50)
    assert (filtered.obs["grna_frac"] >= 0.8).all()
    assert "SPI1" not in set(filtered.obs["perturbation"])  # 48 cells before the guide filter
    assert filtered.obs["perturbation"].value_counts().min() >= 50
    record = filtered.uns["pyro_svae_filtering"]
    assert record["n_cells_read"] == 20729 and record["n_cells_kept"] == filtered.n_obs
    assert list(record["dropped_perturbations"]) == ["SPI1"]


@needs_papalexi
def test_papalexi_fits_with_the_replicate_as_batch():
    adata = papalexi2021(PAPALEXI, min_guide_fraction=0.8, min_cells=50)
    adata = adata[::8].copy()  # a subsample keeps the test fast
    model = pyro_svae.fit(adata, batch_key="bio_rep", **{**FAST, "max_epochs": 2})
    assert model.batch_names == ("rep_1", "rep_2", "rep_3")
    assert np.isfinite(model.get_latent()).all() and len(model.perturbation_names) == 24


def test_loaders_name_missing_files_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.h5ad does not exist"):
        papalexi2021(tmp_path / "nothing.h5ad")
    adata = simulate(n_perturbations=2, n_cells_per_perturbation=10, n_control=10)
    adata.write_h5ad(tmp_path / "screen.h5ad")
    with pytest.raises(KeyError, match=r"lacks the obs column\(s\) \['grna_frac', 'bio_rep'\]"):
        papalexi2021(tmp_path / "screen.h5ad")
    with pytest.raises(KeyError, match=r"lacks the obs column\(s\) \['gene'\]"):
        replogle2022(tmp_path / "screen.h5ad")


def _replogle_layout(tmp_path, n_null=4):
    """A simulated screen written as Replogle et al.'s h5ad: ``obs["gene"]``, ``non-targeting``
    controls, Ensembl-like var_names with ``var["gene_name"]``; plus null perturbations whose
    cells are drawn like controls."""
    adata = simulate(n_perturbations=6, n_latent=3, n_genes=60, n_cells_per_perturbation=80, n_control=400,
                     shift_size=5.0, seed=3)
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    controls = np.flatnonzero(labels == "control")
    for k in range(n_null):  # relabel control cells: no phenotype at all
        labels[controls[k * 40:(k + 1) * 40]] = f"null{k}"
    labels[labels == "control"] = "non-targeting"
    adata.obs = pd.DataFrame({"gene": labels, "gem_group": 1}, index=adata.obs_names)
    adata.var = pd.DataFrame({"gene_name": [f"G{i}" for i in range(adata.n_vars)]},
                             index=[f"ENSG{i:05d}" for i in range(adata.n_vars)])
    adata.X = sp.csr_matrix(adata.X)
    path = tmp_path / "K562_essential_raw_singlecell.h5ad"
    adata.write_h5ad(path)
    return path


def test_replogle_keeps_strong_perturbations_and_variable_genes(tmp_path):
    path = _replogle_layout(tmp_path)
    adata = replogle2022(path, min_cells=20, n_top_genes=30)
    kept = set(adata.obs["perturbation"]) - {"control"}
    assert kept == {f"p{i}" for i in range(6)}  # every simulated perturbation shifts 1-2 latents strongly
    record = adata.uns["pyro_svae_filtering"]
    assert sorted(record["dropped_weak"]) == [f"null{k}" for k in range(4)]
    assert adata.n_vars == 30 and adata.var_names[0].startswith("G") and "gene_id" in adata.var.columns
    assert (adata.obs["perturbation"] == "control").sum() == 400 - 4 * 40
    assert pyro_svae.fit(adata, **{**FAST, "max_epochs": 1}).gene_names == tuple(adata.var_names)


def test_replogle_needs_controls(tmp_path):
    path = _replogle_layout(tmp_path)
    with pytest.raises(ValueError, match="obs\\['gene'\\] == 'NT'"):
        replogle2022(path, control_label="NT")


def test_highly_variable_genes_prefers_overdispersed_genes():
    rng = np.random.default_rng(0)
    mean = rng.uniform(1, 20, size=40)
    counts = rng.poisson(mean, size=(500, 40)).astype(float)
    noisy = [3, 17, 29]
    counts[:, noisy] = rng.negative_binomial(0.5, 0.5 / (0.5 + mean[noisy]), size=(500, 3))
    assert set(noisy) <= set(highly_variable_genes(counts, n_top_genes=5, n_bins=5))
