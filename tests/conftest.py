"""Shared fixtures: small simulated screens as AnnData, and fast fit settings."""

import numpy as np
import pyro
import pytest
import torch

from pyro_svae.datasets import simulate

# One torch thread: the test models are tiny (a second thread only adds synchronisation), and
# results do not then depend on the machine's core count or load.
torch.set_num_threads(1)

#: fit() settings for tests that need a fitted model but not a converged one
FAST = dict(n_latent=3, n_hidden=16, n_layers=1, batch_size=64, max_epochs=3, progress=False)


@pytest.fixture(autouse=True)
def _clean_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def make_screen(n_perturbations=4, n_latent=3, n_genes=30, n_cells_per_perturbation=40, n_control=60, seed=0, **kw):
    """A tiny simulated screen (AnnData); see :func:`pyro_svae.datasets.simulate`."""
    return simulate(n_perturbations=n_perturbations, n_latent=n_latent, n_genes=n_genes,
                    n_cells_per_perturbation=n_cells_per_perturbation, n_control=n_control,
                    max_targets=min(2, n_latent), n_hidden=max(8, n_latent), seed=seed, **kw)


@pytest.fixture
def screen():
    return make_screen()


@pytest.fixture(scope="session")
def fitted():
    """One model fitted for a few epochs, shared by read-only tests."""
    import pyro_svae

    adata = make_screen(seed=1)
    return pyro_svae.fit(adata, **FAST), adata


@pytest.fixture(scope="session")
def demo_fits():
    """The demo screen with seed 1 fitted with default settings by ``spike_and_slab``:
    ``(adata, {"spike_and_slab": model})``. Slow (~1.5 min); shared by the slow tests that need a
    model that has recovered its latents (calibration, counterfactuals, gene programs)."""
    import pyro_svae
    from pyro_svae.demo import DEMO_SCREEN

    adata = simulate(**{**DEMO_SCREEN, "seed": 1})
    model = pyro_svae.fit(adata, n_latent=DEMO_SCREEN["n_latent"], seed=1, progress=False)
    return adata, {"spike_and_slab": model}


def prior_part_of_elbo(model, screen, cells=None, draws: int = 100) -> float:
    """The ELBO's terms that depend on the prior's sites (what ``refit_prior`` maximises) on the screen's
    ``cells`` (positions, default all), averaged over ``draws`` draws of the sites at a fixed seed."""
    from pyro_svae.prior_refit import label_statistics, prior_objective

    cpu = torch.device("cpu")
    codes, counts, sums = label_statistics(model.components, screen, cpu, cells)
    torch.manual_seed(123)
    with model.scope(), torch.no_grad():
        return float(np.mean([prior_objective(model.components, codes, counts, sums, cpu).item()
                              for _ in range(draws)]))


def adata_equal(a, b) -> bool:
    """Byte-for-byte equality of X, obs, var, layers, obsm and uns keys."""
    import scipy.sparse as sp

    def dense(m):
        return m.toarray() if sp.issparse(m) else np.asarray(m)

    return (np.array_equal(dense(a.X), dense(b.X), equal_nan=True) and a.X.dtype == b.X.dtype and a.obs.equals(b.obs)
            and a.var.equals(b.var) and set(a.layers) == set(b.layers) and set(a.obsm) == set(b.obsm)
            and set(a.uns) == set(b.uns) and all(np.array_equal(dense(a.layers[k]), dense(b.layers[k]), equal_nan=True) for k in a.layers))
