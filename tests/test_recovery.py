"""Recovery with default settings on a slice of the grid of simulated screens (slow: fits to convergence).

Three screens of ``pyro_svae.datasets.grid`` (``SLICE``), simulated with a seed the grid benchmark
does not use (2), each fitted by ``spike_and_slab`` with fit seeds 0 and 1 and by ``prior="none"``,
``n_latent`` the true number and every other ``fit`` setting at its default: the goals of the grid
(``benchmarks/results/recovery_grid.md``) as assertions. The nine fits run on two processes, one
torch thread each, so the machine's core count does not change the summation order. Checked when
written: screen seeds 2 and 3, fit seeds 0 and 1, one thread; all twelve sparse fits reach
MCC >= 0.95 and F1 >= 0.98 (shift2 with screen seed 2 and fit seed 0 did so only after the
re-rotation of a fit left with mixed latents: MCC 0.887 without it). Re-checked after
``max_epochs="auto"`` went to 28,000 steps: every assertion holds for screen seeds 2 and 3.
"""

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

SLICE = ("base", "shift2", "targets3")
#: another screen seed checks that the goals hold beyond one: PYRO_SVAE_SLICE_SEED=3 pytest tests/test_recovery.py
SCREEN_SEED = int(os.environ.get("PYRO_SVAE_SLICE_SEED", "2"))


def _fit(screen: str, prior: str, fit_seed: int, path: str) -> str:
    import torch

    torch.set_num_threads(1)
    import pyro_svae
    from pyro_svae.datasets import grid_screens, simulate_grid_screen

    spec = grid_screens("all")[screen]
    adata = simulate_grid_screen(screen, seed=SCREEN_SEED)
    options = {} if prior == "spike_and_slab" else {"prior": prior, "warm_start": None}
    model = pyro_svae.fit(adata, n_latent=spec["n_latent"], control="control" if spec["n_control"] else None,
                          seed=fit_seed, progress=False, **options)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def grid_slice(tmp_path_factory):
    """``{screen: (adata, {(prior, fit_seed): model}, {(prior, fit_seed): scores})}`` for the slice,
    fitted on two processes and scored once (:func:`_scores`)."""
    import pyro_svae
    from pyro_svae.datasets import simulate_grid_screen

    root = tmp_path_factory.mktemp("grid_slice")
    jobs = [(screen, prior, seed) for screen in SLICE for prior, seed in (("spike_and_slab", 0), ("spike_and_slab", 1),
                                                                           ("none", 0))]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        paths = list(pool.map(_fit, *zip(*jobs), [str(root / f"{s}-{p}-{f}") for s, p, f in jobs]))
    out = {}
    for (screen, prior, seed), path in zip(jobs, paths):
        adata = out.setdefault(screen, (simulate_grid_screen(screen, seed=SCREEN_SEED), {}))[0]
        out[screen][1][(prior, seed)] = pyro_svae.load(path, adata=adata)
    return {screen: (adata, models, {key: _scores(model, adata) for key, model in models.items()})
            for screen, (adata, models) in out.items()}


def _scores(model, adata):
    from pyro_svae import metrics

    latent, truth = model.get_latent(), adata.obsm["z_true"]
    matching = metrics.match_latents(latent, truth)
    true_targets = metrics.true_targets_of(model, adata, matching)
    out = {"mcc": float(matching.correlations.mean()), **metrics.recovery(model, adata)}
    for fdr in (0.05, 0.1):
        calls = model.target_calls(fdr=fdr)
        called = np.zeros((len(model.perturbation_names), model.config.n_latent), bool)
        called[[model.perturbation_names.index(p) for p in calls["perturbation"]], calls["latent"].to_numpy(int)] = True
        out[f"fdp_{fdr}"] = float((called & ~true_targets).sum() / max(1, called.sum()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("screen", SLICE)
def test_defaults_recover_latents_and_targets(grid_slice, screen):
    _, _, scores = grid_slice[screen]
    for seed in (0, 1):
        got = scores[("spike_and_slab", seed)]
        assert got["mcc"] >= 0.9 and got["target_f1"] >= 0.9, (seed, got["mcc"], got["target_f1"])


@pytest.mark.slow
@pytest.mark.parametrize("screen", SLICE)
def test_sparsity_beats_a_plain_vae(grid_slice, screen):
    _, _, scores = grid_slice[screen]
    sparse, plain = scores[("spike_and_slab", 0)], scores[("none", 0)]
    assert sparse["mcc"] >= plain["mcc"] + 0.15, (sparse["mcc"], plain["mcc"])


@pytest.mark.slow
@pytest.mark.parametrize("screen", SLICE)
def test_target_calls_keep_their_false_discovery_rate(grid_slice, screen):
    _, _, scores = grid_slice[screen]
    for seed in (0, 1):
        got = scores[("spike_and_slab", seed)]
        assert got["fdp_0.05"] <= 0.1 and got["fdp_0.1"] <= 0.15, (seed, got["fdp_0.05"], got["fdp_0.1"])


@pytest.mark.slow
@pytest.mark.parametrize("screen", SLICE)
def test_two_seeds_call_the_same_targets(grid_slice, screen):
    from pyro_svae.selection import call_agreement

    adata, models, _ = grid_slice[screen]
    assert call_agreement(models[("spike_and_slab", 0)], models[("spike_and_slab", 1)], adata) >= 0.9
