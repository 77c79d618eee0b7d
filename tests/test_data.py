"""The AnnData boundary: bad input gets a clear error naming the key; the user's data is never changed."""


import numpy as np
import pytest
import scipy.sparse as sp

import pyro_svae
from pyro_svae.data import read_screen

from .conftest import FAST, adata_equal


def test_reads_dense_and_sparse_alike(screen):
    dense = read_screen(screen)
    sparse_adata = screen.copy()
    sparse_adata.X = sp.csc_matrix(sparse_adata.X)
    sparse = read_screen(sparse_adata)
    assert sp.isspmatrix_csr(sparse.counts)
    assert np.array_equal(sparse.counts.toarray(), dense.counts)
    assert np.array_equal(dense.library, dense.counts.sum(1))
    assert dense.perturbation_names == tuple(sorted(set(screen.obs["perturbation"]) - {"control"}))


def test_combinations_are_multi_hot(screen):
    screen.obs["perturbation"] = screen.obs["perturbation"].astype(str)
    screen.obs.iloc[0, 0] = "p0+p2"
    data = read_screen(screen)
    assert data.perturbations.shape[1] == 2
    assert sorted(data.perturbations[0]) == [0, 2]
    controls = (screen.obs["perturbation"] == "control").to_numpy()
    assert (data.perturbations[controls] == data.n_perturbations).all()


def _set_label(adata, row, value):
    labels = adata.obs["perturbation"].astype(object).to_numpy().copy()
    labels[row] = value
    adata.obs["perturbation"] = labels


@pytest.mark.parametrize(
    "corrupt, error, message",
    [
        (lambda a: a.X.__setitem__((0, 0), -1), ValueError, "negative"),
        (lambda a: a.X.__setitem__((0, 0), np.nan), ValueError, "NaN or infinite"),
        (lambda a: a.X.__setitem__((0, 0), np.inf), ValueError, "NaN or infinite"),
        (lambda a: a.X.__setitem__((0, 0), 0.5), ValueError, "non-integer.*allow_non_integer"),
        (lambda a: a.X.__setitem__(slice(None), 0), ValueError, "all zeros"),
        (lambda a: _set_label(a, 0, np.nan), ValueError, "missing"),
    ],
    ids=["negative", "nan", "inf", "non-integer", "all-zero", "nan-label"],
)
def test_bad_counts_and_labels(screen, corrupt, error, message):
    corrupt(screen)
    before = screen.copy()
    with pytest.raises(error, match=message):
        pyro_svae.fit(screen, **FAST)
    assert adata_equal(before, screen)


def test_non_integer_counts_accepted_on_request(screen):
    screen.X[0, 0] = 0.5
    data = read_screen(screen, allow_non_integer=True)
    assert data.counts[list(screen.obs_names).index(screen.obs_names[0]), 0] == 0.5


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(perturbation_key="guide"), KeyError, "perturbation_key='guide'.*available columns"),
        (dict(batch_key="replicate"), KeyError, "batch_key='replicate'"),
        (dict(layer="counts"), KeyError, "layer='counts'"),
        (dict(control="NT"), ValueError, "control='NT'.*most frequent labels.*'control'"),
        (dict(n_latent=0), ValueError, "n_latent"),
        (dict(prior="spikeslab"), ValueError, "Unknown prior 'spikeslab'"),
        (dict(likelihood="gaussian"), ValueError, "likelihood"),
    ],
)
def test_bad_arguments(screen, kwargs, error, message):
    before = screen.copy()
    with pytest.raises(error, match=message):
        pyro_svae.fit(screen, **{**FAST, **kwargs})
    assert adata_equal(before, screen)


def test_fit_leaves_adata_unchanged(screen):
    screen.X = sp.csr_matrix(screen.X)
    before = screen.copy()
    pyro_svae.fit(screen, **FAST)
    assert adata_equal(before, screen)


def test_a_screen_of_controls_only_is_refused():
    import anndata as ad
    import pandas as pd

    adata = ad.AnnData(np.ones((4, 3), np.float32), obs=pd.DataFrame({"perturbation": ["control"] * 4},
                                                                      index=[f"c{i}" for i in range(4)]))
    with pytest.raises(ValueError, match="holds only control cells"):
        read_screen(adata)
