"""Large screens: sparse counts are densified per minibatch only, backed AnnData stays on disk."""

import json
import subprocess
import sys
import tracemalloc

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import pyro_svae
from pyro_svae.data import BackedCounts, read_screen

from .conftest import FAST, make_screen


@pytest.fixture
def backed_screen(tmp_path):
    adata = make_screen(n_perturbations=3, n_cells_per_perturbation=30, seed=5)
    adata.X = sp.csr_matrix(adata.X)
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_backed_anndata_trains_exactly_as_in_memory(backed_screen):
    adata, path = backed_screen
    backed = ad.read_h5ad(path, backed="r")
    screen = read_screen(backed)
    assert isinstance(screen.counts, BackedCounts)
    assert np.array_equal(screen.library, np.asarray(adata.X.sum(1)).ravel())
    in_memory = pyro_svae.fit(adata, **FAST)
    on_disk = pyro_svae.fit(backed, **FAST)
    for name, value in in_memory.params["params"].items():
        assert torch.equal(value, on_disk.params["params"][name]), name
    assert np.allclose(on_disk.get_latent(), in_memory.get_latent())
    assert backed.isbacked  # never loaded


def test_backed_rows_in_any_order_and_dense_files(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.poisson(2.0, size=(40, 7)).astype(np.float32)
    adata = ad.AnnData(dense, obs=pd.DataFrame({"perturbation": ["control"] * 20 + ["a"] * 20},
                                               index=[f"c{i}" for i in range(40)]))
    adata.write_h5ad(tmp_path / "dense.h5ad")
    counts = read_screen(ad.read_h5ad(tmp_path / "dense.h5ad", backed="r")).counts
    index = np.array([30, 2, 17, 2])
    assert np.array_equal(counts[index], dense[index])


def test_backed_validation_reads_in_chunks_and_rejects_bad_values(tmp_path, monkeypatch):
    import pyro_svae.counts as data

    monkeypatch.setattr(data, "BACKED_CHUNK", 7)
    adata = make_screen(n_perturbations=2, n_cells_per_perturbation=10, seed=0)
    X = adata.X.copy()
    X[25, 3] = -2.0
    adata.X = sp.csr_matrix(X)
    adata.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(ValueError, match="negative values"):
        read_screen(ad.read_h5ad(tmp_path / "bad.h5ad", backed="r"))


def test_reading_a_backed_file_does_not_load_the_matrix(tmp_path, monkeypatch):
    import pyro_svae.counts as data

    monkeypatch.setattr(data, "BACKED_CHUNK", 2_000)
    n_cells, n_genes = 60_000, 1_000
    rng = np.random.default_rng(0)
    X = sp.random(n_cells, n_genes, density=0.2, format="csr", dtype=np.float32, random_state=0)
    X.data = np.ceil(X.data * 5)
    obs = pd.DataFrame({"perturbation": rng.choice(["control", "a", "b"], n_cells)},
                       index=pd.RangeIndex(n_cells).astype(str))
    ad.AnnData(X, obs=obs).write_h5ad(tmp_path / "big.h5ad")
    matrix_bytes = X.data.nbytes + X.indices.nbytes + X.indptr.nbytes
    backed = ad.read_h5ad(tmp_path / "big.h5ad", backed="r")
    tracemalloc.start()
    screen = read_screen(backed)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert screen.n_cells == n_cells
    # chunks of 2,000 rows and per-cell labels, never the matrix (96 MB)
    assert peak < 0.15 * matrix_bytes, (peak, matrix_bytes)


MEMORY_SCRIPT = """
import json, sys
import numpy as np, scipy.sparse as sp, anndata, pandas as pd, torch
torch.set_num_threads(1)
import pyro_svae
n_cells, n_genes, per_row = 200_000, 2_000, 100  # ~5% non-zero
rng = np.random.default_rng(0)
columns = np.sort(rng.integers(0, n_genes, size=(n_cells, per_row), dtype=np.int32), axis=1)
X = sp.csr_matrix((rng.poisson(2.0, size=columns.size).astype(np.float32) + 1, columns.ravel(),
                   np.arange(0, columns.size + 1, per_row)), shape=(n_cells, n_genes))
X.sum_duplicates()
del columns
labels = np.where(rng.random(n_cells) < 0.1, "control", rng.choice(["a", "b", "c"], n_cells))
adata = anndata.AnnData(X=X, obs=pd.DataFrame({"perturbation": labels}, index=pd.RangeIndex(n_cells).astype(str)))

def rss_gb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024 / 1e9
import threading
peak = [0.0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], rss_gb())
        done.wait(0.01)
data_gb = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 1e9
before = rss_gb()
sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
pyro_svae.fit(adata, n_latent=5, n_hidden=32, n_layers=1, batch_size=1024, max_epochs=1, early_stopping=False,
              validation_fraction=0.0, progress=False)
done.set()
sampler.join()
print(json.dumps({"data_gb": data_gb, "before_gb": before, "peak_gb": peak[0]}))
"""


@pytest.mark.slow
def test_sparse_screen_of_200k_cells_trains_within_1gb_above_the_data():
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    memory = json.loads(out.stdout.strip().splitlines()[-1])
    dense_gb = 200_000 * 2_000 * 4 / 1e9  # 1.6 GB: densifying X whole would break the bound
    assert memory["peak_gb"] - memory["before_gb"] < 1.0, memory
    assert memory["peak_gb"] - memory["before_gb"] < dense_gb, memory


def test_value_checks_in_bounded_chunks_still_find_the_bad_value():
    from pyro_svae.counts import _check_values

    values = np.ones(1000, np.float32)
    values[-1] = 0.5  # in the last chunk
    with pytest.raises(ValueError, match="non-integer values"):
        _check_values(values, "adata.X", allow_non_integer=False, chunk=64)
    values[-1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        _check_values(values, "adata.X", allow_non_integer=True, chunk=64)
