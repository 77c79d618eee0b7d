"""Loaders for public screens: filtering, the AnnData they return, and errors on malformed files.

The Papalexi tests read the real file and skip when it is absent; the Replogle tests write
small screens in the layout of the public h5ad files, built from the simulator.
"""

import time
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pyro_svae
from pyro_svae.data import read_screen
from pyro_svae.datasets import papalexi2021, replogle2022
from pyro_svae.datasets.preprocess import highly_variable_genes, perturbation_phenotypes

from .conftest import make_screen

N_STRONG, N_NULL_CELLS = 5, 60


@pytest.fixture(scope="module")
def papalexi_path():
    path = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "papalexi2021_lowmoi.h5ad"
    if not path.is_file():
        pytest.skip(f"real data not available at {path}")
    return path


def _papalexi_layout(tmp_path, drop=()):
    """A simulated screen in the layout of the Papalexi file, without the columns in ``drop``."""
    adata = make_screen()
    adata.X = sp.csr_matrix(adata.X)
    rng = np.random.default_rng(0)
    adata.obs["bio_rep"] = pd.Categorical(rng.choice(["rep_1", "rep_2"], adata.n_obs))
    adata.obs["grna_frac"] = rng.uniform(0.5, 1.0, adata.n_obs)
    adata.obs = adata.obs.drop(columns=list(drop))
    path = tmp_path / "papalexi_layout.h5ad"
    adata.write_h5ad(path)
    return path, adata


def _replogle_layout(tmp_path, dense=True, name="replogle.h5ad", drop_obs=()):
    """A simulated screen in the layout of the Replogle 2022 h5ad: 5 strong perturbations (p0..p4),
    2 null ones (control cells relabelled NULL1, NULL2), one with 10 cells (TINY)."""
    adata = pyro_svae.datasets.simulate(n_perturbations=N_STRONG, n_latent=3, n_genes=100, n_cells_per_perturbation=60,
                                        n_control=400, max_targets=2, n_hidden=8, seed=0)
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    controls = np.random.default_rng(0).permutation(np.flatnonzero(labels == "control"))
    labels[controls[:N_NULL_CELLS]] = "NULL1"
    labels[controls[N_NULL_CELLS:2 * N_NULL_CELLS]] = "NULL2"
    labels[controls[2 * N_NULL_CELLS:2 * N_NULL_CELLS + 10]] = "TINY"
    labels[labels == "control"] = "non-targeting"
    obs = pd.DataFrame({
        "gene": pd.Categorical(labels),
        "gene_id": pd.Categorical([f"ENSG{abs(hash(g)) % 10**8:011d}" for g in labels]),
        "transcript": pd.Categorical(["P1P2"] * len(labels)),
        "gem_group": np.arange(len(labels)) % 3 + 1,
        "UMI_count": np.asarray(adata.X.sum(axis=1)).reshape(-1),
    }, index=adata.obs_names).drop(columns=list(drop_obs))
    var = pd.DataFrame({"gene_name": [f"G{g}" for g in range(adata.n_vars)]},
                       index=[f"ENSG{g:011d}" for g in range(adata.n_vars)])
    out = anndata.AnnData(X=adata.X if dense else sp.csr_matrix(adata.X), obs=obs, var=var)
    path = tmp_path / name
    out.write_h5ad(path)
    return path


# Papalexi 2021 (real file)

def test_papalexi_default_filtering_drops_only_small_perturbations(papalexi_path, tmp_path):
    adata = papalexi2021(papalexi_path)
    record = adata.uns["pyro_svae_filtering"]
    assert record["perturbations_dropped"] == ["SPI1"]  # 48 cells < min_cells=50
    assert (adata.n_obs, adata.n_vars) == (20729 - 48, 299) == (record["n_cells"], record["n_genes"])
    sizes = adata.obs["perturbation"].value_counts()
    assert "SPI1" not in sizes and sizes["control"] == 2386 and sizes.min() >= 50
    assert set(adata.obs["perturbation"].cat.categories) == set(sizes.index)  # no unused labels
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert read_screen(adata, batch_key="bio_rep").n_perturbations == 24
    adata.write_h5ad(tmp_path / "filtered.h5ad")  # the record is h5ad-serialisable


def test_papalexi_guide_purity_and_min_cells(papalexi_path):
    pure = papalexi2021(papalexi_path, min_guide_fraction=0.8)
    assert pure.obs["grna_frac"].min() >= 0.8
    assert pure.uns["pyro_svae_filtering"]["cells_below_guide_fraction"] == 4537
    assert pure.n_obs == 20729 - 4537 - 33  # and the 33 pure SPI1 cells
    everything = papalexi2021(papalexi_path, min_cells=1)
    assert everything.n_obs == 20729 and "SPI1" in everything.obs["perturbation"].cat.categories
    strict = papalexi2021(papalexi_path, min_cells=1000)
    assert set(strict.obs["perturbation"].cat.categories) == {"control", "IFNGR1", "IFNGR2", "CD86", "ATF2", "IRF1", "JAK2",
                                                              "MARCH8"}


def test_phenotype_proxy_finds_the_interferon_gamma_pathway(papalexi_path):
    adata = papalexi2021(papalexi_path)
    table = perturbation_phenotypes(adata.X, adata.obs["perturbation"], "control", gene_symbols=adata.var_names)
    strong = set(table.index[table["n_de_genes"] >= 10])
    assert {"IFNGR1", "IFNGR2", "JAK2", "STAT1", "IRF1"} <= strong and len(strong) == 9  # as docs/api.md says
    assert not strong & {"CD86", "ATF2", "CAV1", "TNFRSF14"}  # no detectable effect on these 299 genes


@pytest.mark.slow
def test_papalexi_is_ready_for_fit(papalexi_path):
    adata = papalexi2021(papalexi_path)
    start = time.perf_counter()
    model = pyro_svae.fit(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep",
                          max_epochs=2, progress=False)
    seconds = time.perf_counter() - start
    assert len(model.history) == 2 and np.isfinite(model.history["train_elbo"]).all()
    assert model.intervention_targets().shape == (24, 10)
    print(f"2-epoch fit on {adata.n_obs} cells x {adata.n_vars} genes: {seconds:.1f} s")


@pytest.mark.slow
def test_papalexi_defaults_call_the_knockouts_with_a_phenotype(papalexi_path):
    """fit's defaults on the whole screen (as benchmarks/papalexi.py): a target at FDR 0.1 for at
    least 7 of the 9 knockouts with a phenotype (IRF1 and CUL3 among them: shifts of ~0.4 SD, which
    a min_shift floor of 0.5 left out), none for the 15 without, and one latent for the IFN-gamma
    receptor pathway. Every call has PIP > 0.5 (target_calls' min_pip); BRD4 (16 genes changed) and
    MYC (73 cells) get none in benchmarks/results/papalexi.md."""
    adata = papalexi2021(papalexi_path, min_guide_fraction=0.8, min_cells=50)
    table = perturbation_phenotypes(adata.X, adata.obs["perturbation"].astype(str), "control",
                                    gene_symbols=list(adata.var_names))
    strong = set(table.index[table["n_de_genes"] >= 10])
    model = pyro_svae.fit(adata, batch_key="bio_rep", n_latent=10, seed=0, progress=False)
    calls = model.target_calls(fdr=0.1)
    called = set(calls["perturbation"])
    assert (calls["pip"] > 0.5).all(), calls
    assert not called - strong, f"targets called for knockouts without a phenotype: {sorted(called - strong)}"
    assert {"IRF1", "CUL3"} <= called and len(called & strong) >= 7, sorted(called)
    latents = [set(calls.loc[calls["perturbation"] == p, "latent"]) for p in ("IFNGR1", "IFNGR2", "JAK2", "STAT1")]
    assert set.intersection(*latents), latents


# Papalexi layout: validation (no real data needed)

def test_papalexi_missing_columns_are_named(tmp_path):
    path, _ = _papalexi_layout(tmp_path, drop=["grna_frac"])
    assert papalexi2021(path).n_obs > 0  # grna_frac only needed for the purity filter
    with pytest.raises(KeyError, match=r"lacks column\(s\) \['grna_frac'\].*columns present: \['perturbation', 'true_library', 'bio_rep'\]"):
        papalexi2021(path, min_guide_fraction=0.8)
    path, _ = _papalexi_layout(tmp_path, drop=["bio_rep"])
    with pytest.raises(KeyError, match="'bio_rep'"):
        papalexi2021(path)


def test_papalexi_bad_arguments_and_missing_file(tmp_path):
    path, _ = _papalexi_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.h5ad"):
        papalexi2021(tmp_path / "nowhere.h5ad")
    with pytest.raises(ValueError, match="min_guide_fraction"):
        papalexi2021(path, min_guide_fraction=1.5)
    with pytest.raises(ValueError, match="control='NT'"):
        papalexi2021(path, control="NT")


def test_papalexi_filters_a_copy_of_the_file(tmp_path):
    path, adata = _papalexi_layout(tmp_path)
    pure = papalexi2021(path, min_guide_fraction=0.8, min_cells=1)
    expected = adata.obs_names[adata.obs["grna_frac"] >= 0.8]
    assert list(pure.obs_names) == list(expected)
    assert np.array_equal(pure.X.toarray(), adata[expected].X.toarray())


# Replogle 2022 layout

def test_replogle_keeps_strong_perturbations_and_drops_null_ones(tmp_path):
    adata = replogle2022(_replogle_layout(tmp_path), n_top_genes=40)
    record = adata.uns["pyro_svae_filtering"]
    assert set(adata.obs["perturbation"].cat.categories) == {"control"} | {f"p{i}" for i in range(N_STRONG)}
    assert record["perturbations_weak_phenotype"] == ["NULL1", "NULL2"]
    assert record["perturbations_too_few_cells"] == ["TINY"]
    assert (adata.obs["perturbation"] == "control").sum() == 400 - 2 * N_NULL_CELLS - 10  # all controls kept
    assert (adata.obs.loc[adata.obs["perturbation"] == "control", "gene"] == "non-targeting").all()
    assert adata.n_vars == 40 and list(adata.var_names) == sorted(adata.var_names)  # file order
    assert {"gene_name", "hvg_dispersion_norm"} <= set(adata.var.columns)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.float32
    assert read_screen(adata, "perturbation", "control", batch_key="gem_group").n_perturbations == N_STRONG
    adata.write_h5ad(tmp_path / "filtered.h5ad")


def test_replogle_counts_are_the_files_counts(tmp_path):
    path = _replogle_layout(tmp_path)
    adata = replogle2022(path, n_top_genes=30)
    raw = anndata.read_h5ad(path)
    assert np.array_equal(adata.X.toarray(), raw[adata.obs_names, adata.var_names].X)


def test_replogle_dense_sparse_and_chunking_agree(tmp_path):
    dense = replogle2022(_replogle_layout(tmp_path, dense=True, name="dense.h5ad"), n_top_genes=25, chunk_size=37)
    sparse = replogle2022(_replogle_layout(tmp_path, dense=False, name="sparse.h5ad"), n_top_genes=25)
    assert list(dense.var_names) == list(sparse.var_names) and list(dense.obs_names) == list(sparse.obs_names)
    assert (dense.X != sparse.X).nnz == 0
    pd.testing.assert_frame_equal(dense.uns["pyro_svae_filtering"]["phenotypes"],
                                  sparse.uns["pyro_svae_filtering"]["phenotypes"])


def test_replogle_thresholds_are_parameters(tmp_path):
    path = _replogle_layout(tmp_path)
    everything = replogle2022(path, min_cells=5, min_de_genes=0, n_top_genes=10_000)
    assert {"NULL1", "NULL2", "TINY"} <= set(everything.obs["perturbation"].cat.categories)
    assert everything.n_vars == 100  # fewer genes than asked: all of them
    with pytest.raises(ValueError, match="no perturbation has"):
        replogle2022(path, min_de_genes=1000)


def test_replogle_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="K562_essential_raw_singlecell_01.h5ad"):
        replogle2022(tmp_path / "K562_essential_raw_singlecell_01.h5ad")
    path = _replogle_layout(tmp_path, drop_obs=["gene"])
    with pytest.raises(KeyError, match=r"\['gene'\].*columns present: \['gene_id', 'transcript', 'gem_group', 'UMI_count'\]"):
        replogle2022(path)
    with pytest.raises(KeyError, match=r"\['target'\]"):
        replogle2022(_replogle_layout(tmp_path, name="ok.h5ad"), perturbation_column="target")
    with pytest.raises(ValueError, match="control_label='NT'"):
        replogle2022(_replogle_layout(tmp_path, name="ok2.h5ad"), control_label="NT")
    with pytest.raises(ValueError, match="control='p0' is already"):
        replogle2022(_replogle_layout(tmp_path, name="ok3.h5ad"), control="p0")


# preprocess

def test_own_target_knockdown_is_not_a_phenotype():
    adata = make_screen(n_perturbations=1, n_cells_per_perturbation=10, n_control=200)
    counts = np.asarray(adata.X[(adata.obs["perturbation"] == "control").to_numpy()]).copy()
    labels = np.array(["control"] * len(counts), dtype=object)
    labels[:80] = "gene3"
    counts[:80, 3] = 0  # the guide silences its target and nothing else
    symbols = [f"gene{g}" for g in range(counts.shape[1])]
    counted = perturbation_phenotypes(counts, labels, "control").loc["gene3", "n_de_genes"]
    assert counted >= 1
    # the silenced gene alone is no longer counted (the others shift a little through the normalisation)
    assert perturbation_phenotypes(counts, labels, "control", gene_symbols=symbols).loc["gene3", "n_de_genes"] == counted - 1


def test_highly_variable_genes_prefers_overdispersed_genes():
    rng = np.random.default_rng(0)
    mean = np.tile(np.geomspace(0.5, 20, 20), 2)  # genes 0-19 Poisson, 20-39 the same means, overdispersed
    rate = np.concatenate([np.tile(mean[:20], (500, 1)), rng.gamma(0.5, mean[20:] / 0.5, size=(500, 20))], axis=1)
    counts = rng.poisson(rate).astype(np.float32)
    table = highly_variable_genes(counts, n_top_genes=20, n_bins=5)
    assert set(np.flatnonzero(table["highly_variable"])) == set(range(20, 40))
    chunked = highly_variable_genes(sp.csr_matrix(counts), n_top_genes=20, n_bins=5, chunk_size=7)
    pd.testing.assert_frame_equal(table, chunked, rtol=1e-9)
    first = highly_variable_genes(counts, n_top_genes=20, rows=np.arange(500) < 250, n_bins=5)
    assert np.allclose(first["dispersion"], highly_variable_genes(counts[:250], n_top_genes=20, n_bins=5)["dispersion"])


def test_highly_variable_genes_never_picks_an_unobserved_gene():
    counts = np.random.default_rng(1).poisson(3.0, size=(50, 6)).astype(float)
    counts[:, 2] = 0
    table = highly_variable_genes(counts, n_top_genes=6)
    assert table["highly_variable"].sum() == 5 and not table.loc[2, "highly_variable"]
    with pytest.raises(ValueError, match="n_top_genes"):
        highly_variable_genes(counts, n_top_genes=0)


def test_grid_parts_are_disjoint_and_the_fresh_part_is_drawn_anew():
    from pyro_svae.datasets import grid

    parts = {part: grid.grid_screens(part) for part in ("dev", "held_out", "fresh")}
    assert [len(parts[p]) for p in ("held_out", "fresh")] == [8, 8]
    assert sum(map(len, parts.values())) == len(grid.grid_screens("all"))
    specs = [tuple(sorted(spec.items())) for spec in parts["held_out"].values()]
    assert not any(tuple(sorted(spec.items())) in specs for spec in parts["fresh"].values())  # other draws
    assert all(grid.part_of(name) == part for part, screens in parts.items() for name in screens)
    for spec in parts["fresh"].values():  # within the ranges the development screens span
        assert 4 <= spec["n_latent"] <= 20 and 20 <= spec["n_perturbations"] <= 200
        assert 1.5 <= spec["shift_size"] <= 5.0 and 500 <= spec["library_size"] <= 10000
    with pytest.raises(KeyError, match="fresh0"):
        grid.part_of("fresh_0")
    with pytest.raises(ValueError, match="fresh"):
        grid.grid_screens("later")
