"""Transfer to unseen perturbations, the IWELBO, predictions under interventions, target calls."""

import itertools

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_svae
from pyro_svae.heldout import log_prior_z
from pyro_svae.posterior import GlobalDraws
from pyro_svae.results import call_targets

from .conftest import FAST, make_screen

HELD_OUT = ["p4", "p5"]


@pytest.fixture(scope="module")
def seen_and_new():
    adata = make_screen(n_perturbations=6, seed=2)
    held_out = adata.obs["perturbation"].isin(HELD_OUT).to_numpy()
    seen = adata[~held_out].copy()
    new = adata[held_out | (adata.obs["perturbation"] == "control").to_numpy()].copy()
    # trained long enough that the perturbations' cells have moved in latent space
    return pyro_svae.fit(seen, **{**FAST, "max_epochs": 30}), seen, new


@pytest.fixture(scope="module")
def transferred(seen_and_new):
    model, _, new = seen_and_new
    before = {name: value.clone() for name, value in model.params["params"].items()}
    result = model.transfer(new, max_epochs=30, seed=0)
    return result, before


# ---- transfer ------------------------------------------------------------------------------------
def test_transfer_fits_only_the_new_perturbations_rows(seen_and_new, transferred):
    model, _, _ = seen_and_new
    result, before = transferred
    assert result.perturbation_names == model.perturbation_names + tuple(HELD_OUT)
    old, new = model.params["params"], result.params["params"]
    assert set(old) == set(new)
    n_old = len(model.perturbation_names)
    changed = []
    for name in old:
        assert torch.equal(old[name], before[name]), f"the original model's {name} changed"
        if old[name].shape == new[name].shape:  # networks, dispersion: frozen exactly
            assert torch.equal(old[name], new[name]), name
        else:  # per-perturbation rows: known rows exact, new rows fitted
            assert new[name].shape[-2] == n_old + len(HELD_OUT)
            assert torch.equal(new[name][..., :n_old, :], old[name]), name
            changed.append(name)
    assert sorted(changed) == ["PriorGuide.locs.shift", "PriorGuide.scales.shift", "PriorGuide.values.pi"]
    pi = result.params["params"]["PriorGuide.values.pi"]  # unconstrained; every new row started at pi = 0.95
    start = torch.logit(torch.tensor(0.95))
    assert not torch.allclose(pi[n_old:], torch.full_like(pi[n_old:], start))
    assert len(result.transfer_history) == 30 and np.isfinite(result.transfer_history["train_elbo"]).all()


def test_transferred_model_reads_the_new_cells_and_round_trips(seen_and_new, transferred, tmp_path):
    _, _, new = seen_and_new
    result, _ = transferred
    assert result.get_latent(new).shape == (new.n_obs, 3)
    assert list(result.intervention_targets().index[-2:]) == HELD_OUT
    result.save(tmp_path / "transferred")
    loaded = pyro_svae.load(tmp_path / "transferred", adata=new)
    assert loaded.perturbation_names == result.perturbation_names
    for name, value in result.params["params"].items():
        assert torch.equal(loaded.params["params"][name], value), name


def test_transfer_improves_the_held_out_likelihood_of_new_perturbations(seen_and_new, transferred):
    model, _, new = seen_and_new
    result, _ = transferred
    cells = new[new.obs["perturbation"].isin(HELD_OUT).to_numpy()]
    # the untransferred model treats their cells as controls: relabel them to score them at all
    as_control = cells.copy()
    as_control.obs["perturbation"] = "control"
    before = model.marginal_log_likelihood(as_control, n_samples=20, seed=0)
    after = result.marginal_log_likelihood(cells, n_samples=20, seed=0)
    assert after > before


def test_transfer_needs_new_perturbations(seen_and_new):
    model, seen, _ = seen_and_new
    with pytest.raises(ValueError, match="no perturbation the model has not seen"):
        model.transfer(seen)
    with pytest.raises(KeyError, match="not a column of adata.obs"):
        model.transfer(seen, perturbation_key="guide")


def test_transfer_with_a_prior_without_perturbation_parameters_adds_names():
    adata = make_screen(n_perturbations=3, seed=0)
    seen = adata[adata.obs["perturbation"] != "p2"].copy()
    model = pyro_svae.fit(seen, prior="none", **FAST)
    result = model.transfer(adata)
    assert result.perturbation_names[-1] == "p2" and result.transfer_history is None
    assert np.isfinite(result.marginal_log_likelihood(adata, n_samples=5))


# ---- IWELBO --------------------------------------------------------------------------------------
def test_iwelbo_bounds_the_elbo_and_tightens_with_samples(fitted):
    model, adata = fitted
    elbo = np.mean([model.elbo() for _ in range(5)])
    values = [model.marginal_log_likelihood(n_samples=s, seed=0) for s in (1, 10, 100)]
    assert values[0] == pytest.approx(elbo, abs=3.0)  # one sample: an ELBO (masks summed exactly)
    assert values[1] >= elbo - 0.5 and values[1] < values[2]
    assert values[0] < values[1]


def test_iwelbo_by_group_and_many_samples_in_bounded_memory(fitted):
    model, adata = fitted
    by = model.marginal_log_likelihood(n_samples=1000, by="perturbation", batch_size=64, seed=1)
    assert isinstance(by, pd.Series) and set(by.index) == set(adata.obs["perturbation"])
    assert np.isfinite(by).all()
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        model.marginal_log_likelihood(n_samples=0)


@pytest.mark.parametrize("members", [1, 2])
def test_log_prior_z_sums_the_masks_exactly(members):
    torch.manual_seed(0)
    S, P, B, K = 2, 3, 4, 2
    slab = torch.randn(S, P, K) * 3
    draws = GlobalDraws({}, delta=slab, slab=slab, inclusion=torch.rand(S, P, K))
    perturbations = torch.tensor([[0, 3], [1, 2], [3, 3], [2, 0]])[:, :members]  # 3 pads
    z = torch.randn(S, B, K)
    expected = torch.zeros(S, B)
    for s, i in itertools.product(range(S), range(B)):
        for k in range(K):
            total = 0.0
            active = [p for p in perturbations[i].tolist() if p < P]
            for mask in itertools.product((0, 1), repeat=len(active)):
                weight, loc = 1.0, 0.0
                for p, m in zip(active, mask):
                    pi = draws.inclusion[s, p, k]
                    weight = weight * (pi if m else 1 - pi)
                    loc = loc + m * draws.slab[s, p, k]
                total = total + weight * dist.Normal(loc, 1.0).log_prob(z[s, i, k]).exp()
            expected[s, i] += torch.log(total)
    assert torch.allclose(log_prior_z(z, draws, perturbations), expected, atol=1e-5)


# ---- predictions -------------------------------------------------------------------------------
def test_predict_samples_counts_for_labels_and_combinations(fitted):
    model, adata = fitted
    predicted = model.predict(["p0", "p0+p1", "control"], n_cells=20, seed=0)
    assert predicted.shape == (60, adata.n_vars) and list(predicted.var_names) == list(adata.var_names)
    assert list(predicted.obs["perturbation"].cat.categories) == ["p0", "p0+p1", "control"]
    assert (predicted.X >= 0).all() and np.array_equal(predicted.X, np.round(predicted.X))
    assert np.allclose(predicted.obsm["shift"][40:], 0.0)  # controls are not shifted
    library = model._read(adata).library
    assert set(predicted.obs["library_size"]) <= set(library.tolist())
    again = model.predict(["p0", "p0+p1", "control"], n_cells=20, seed=0)
    assert np.array_equal(again.X, predicted.X)  # seeded


def test_a_combinations_mean_shift_is_the_sum_of_its_members(fitted):
    model, _ = fitted
    n = 4000
    predicted = model.predict(["p0", "p1", "p0+p1"], n_cells=n, library=1000.0, seed=0)
    shift = predicted.obsm["shift"]
    a, b, ab = shift[:n].mean(0), shift[n:2 * n].mean(0), shift[2 * n:].mean(0)
    spread = shift.std(0).max() * 4 / np.sqrt(n)  # Monte Carlo error of the three means
    assert np.allclose(ab, a + b, atol=2 * spread + 1e-6)
    # and each member's mean shift is the posterior mean effective shift
    assert np.allclose(a, model.shifts().loc["p0"], atol=spread + 0.05)


def test_draw_slots_never_give_one_row_of_one_draw_to_two_cells():
    from pyro_svae.interventions import draw_slots

    P = 4
    rng = np.random.default_rng(0)
    labels = np.array([[0, P], [1, P], [0, 1], [2, 3], [P, P], [3, P]])  # A, B, A+B, C+D, control, D
    codes = labels[rng.integers(len(labels), size=500)]
    slot, n_draws = draw_slots(codes, P)
    assert slot.shape == (500,) and slot.min() >= 0 and slot.max() < n_draws
    rows = [(s, m) for s, row in zip(slot, codes) for m in row if m < P]
    assert len(rows) == len(set(rows))  # each (draw, perturbation) row read by at most one cell
    for label in labels:  # the cells of one label get distinct draws
        cells = (codes == label).all(1)
        assert len(set(slot[cells])) == cells.sum()
    # labels without common members share draws: A, B, C+D and the control fit in one group
    single = np.repeat(np.array([[0, P], [1, P], [2, 3], [P, P]]), 50, axis=0)
    assert draw_slots(single, P)[1] == 50
    assert draw_slots(np.repeat(np.array([[0, P], [0, 1]]), 50, axis=0), P)[1] == 100  # A and A+B apart


def test_predicted_cells_of_one_label_are_independent_draws(fitted):
    """Each cell's mask is drawn on its own: the share of cells with the target on is the PIP, and
    cells do not repeat one another's shift (as they would if they shared a draw)."""
    model, _ = fitted
    n = 2000
    predicted = model.predict(["p0", "p1"], n_cells=n, library=1000.0, seed=1)
    pip = model.intervention_targets()
    for i, label in enumerate(["p0", "p1"]):
        shift = predicted.obsm["shift"][i * n:(i + 1) * n]
        on = np.abs(shift) > 0
        assert np.allclose(on.mean(0), pip.loc[label].to_numpy(), atol=4 * 0.5 / np.sqrt(n) + 1e-3)
        for k in np.flatnonzero(on.mean(0) > 0.5):  # the cells with the mask on: their own draws of the shift
            nonzero = shift[on[:, k], k]
            # shared draws would repeat a few values; independent ones collide only by chance
            assert len(np.unique(nonzero)) >= 0.99 * len(nonzero)


def test_predicted_counts_do_not_depend_on_the_thread_count(fitted, monkeypatch):
    from pyro_svae import interventions

    model, _ = fitted
    monkeypatch.setattr(interventions, "SAMPLING_BLOCK", 64)  # 3 x 50 cells: 3 blocks, drawn on 1 or 2 threads
    threads = torch.get_num_threads()
    try:
        counts = {}
        for n in (1, 2):
            torch.set_num_threads(n)
            counts[n] = model.predict(["p0", "p1", "p0+p1"], n_cells=50, seed=3).X
    finally:
        torch.set_num_threads(threads)
    assert np.array_equal(counts[1], counts[2])
    assert not np.array_equal(counts[1][:64], counts[1][64:128])  # each block its own generator


def test_blocks_without_a_generator_sampler_are_drawn_by_their_distribution(fitted, monkeypatch):
    """A likelihood ``sample_counts`` does not know: each block's own ``.sample()``, in block order."""
    from pyro_svae import interventions

    model, _ = fitted
    built = []  # each block's distribution, in block order (one worker thread below)
    monkeypatch.setattr(interventions, "SAMPLING_BLOCK", 64)
    monkeypatch.setattr(interventions, "sample_counts", lambda counts, seed: built.append(counts))
    z, library = torch.randn(150, model.config.n_latent), torch.full((150,), 1000.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with model.scope(), torch.no_grad():
            torch.manual_seed(0)
            counts = interventions._decode_in_blocks(model.components, z, None, library)
    finally:
        torch.set_num_threads(threads)
    assert [d.batch_shape[0] for d in built] == [64, 64, 22]
    torch.manual_seed(0)
    torch.randint(0, 2**62, (3,))  # the blocks' seeds come first, as in _decode_in_blocks
    expected = torch.cat([d.sample() for d in built])  # the same distributions, not decoded again
    assert counts.shape == (150, len(model.gene_names)) and torch.equal(counts, expected)


@pytest.mark.parametrize("sampler", ["numpy", "torch"])  # the CPU's and the other devices' draws
@pytest.mark.parametrize("name", ["nb", "zinb", "poisson"])
def test_count_draws_from_a_generator_have_the_distributions_moments(name, sampler):
    from pyro_svae import likelihoods

    def draw(counts, seed):
        if sampler == "numpy":
            return likelihoods.sample_counts(counts, seed)  # on the CPU: NumPy's generator
        return likelihoods._draw_torch(counts, torch.Generator().manual_seed(seed))

    n = 200_000
    log_mean = torch.log(torch.tensor([0.2, 3.0, 40.0])).expand(n, 3)
    dispersion = torch.tensor([0.5, 4.0, 20.0], requires_grad=True)  # a parameter, as in the model
    counts = likelihoods.get_likelihood(name).build(log_mean, dispersion, torch.full((n, 3), -1.0))
    draws, again, other = draw(counts, 0), draw(counts, 0), draw(counts, 1)
    assert draws.shape == (n, 3) and draws.dtype == torch.float32 and (draws == draws.round()).all()
    assert torch.equal(draws, again) and not torch.equal(draws, other)
    reference = counts.sample()
    for statistic in (lambda x: x.var(0), lambda x: (x == 0).double().mean(0)):  # beside the distribution's own
        got, own = statistic(draws.double()), statistic(reference.double())
        assert torch.allclose(got, own, rtol=0.05, atol=0.01), (got, own)
    assert torch.allclose(draws.double().mean(0), counts.mean[0].double(), rtol=0.03)
    assert torch.allclose(draws.double().var(0), counts.variance[0].double(), rtol=0.06)
    assert likelihoods.sample_counts(dist.Normal(0.0, 1.0), 0) is None


def test_predict_rejects_unknown_labels_and_batches(fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match="'nope' is not one of the known perturbations"):
        model.predict(["p0+nope"])
    with pytest.raises(ValueError, match="fitted without batches"):
        model.predict(["p0"], batch="b1")
    with pytest.raises(ValueError, match="n_cells must be >= 1"):
        model.predict(["p0"], n_cells=0)


def test_counterfactual_shapes_and_identity(fitted):
    model, adata = fitted
    controls = adata[adata.obs["perturbation"] == "control"]
    cf = model.counterfactual(controls, "p0+p1", num_samples=3, seed=0)
    assert cf.shape == (3, controls.n_obs, adata.n_vars) and cf.dtype == np.int32
    # "control" for control cells changes nothing: counterfactual = posterior predictive draw
    same = model.counterfactual(controls, "control", num_samples=200, seed=0).mean(0)
    replicated = model.posterior_predictive(controls, num_samples=200).mean(0)
    assert np.corrcoef(np.log1p(same.mean(0)), np.log1p(replicated.mean(0)))[0, 1] > 0.99


@pytest.mark.slow
def test_counterfactual_controls_match_the_perturbed_cells(demo_fits):
    """On the simulator, control cells moved to a strong perturbation look like its cells."""
    adata, fits = demo_fits
    model = fits["spike_and_slab"]
    labels = adata.obs["perturbation"].astype(str)
    shifts = pd.DataFrame(adata.uns["true_shifts"], index=list(adata.uns["perturbation_names"]))
    strongest = shifts.abs().sum(1).idxmax()
    controls, perturbed = adata[labels == "control"], adata[labels == strongest]

    def log_mean(x):
        x = np.asarray(x, dtype=float)
        return np.log((x / x.sum(-1, keepdims=True)).mean(-2) + 1e-6)

    observed_shift = log_mean(perturbed.X) - log_mean(controls.X)
    cf = model.counterfactual(controls, strongest, num_samples=20, seed=0)
    predicted_shift = log_mean(cf.reshape(-1, cf.shape[-1])) - log_mean(controls.X)
    r = np.corrcoef(observed_shift, predicted_shift)[0, 1]
    assert r > 0.9, r


# ---- target calls --------------------------------------------------------------------------------
def test_bayesian_fdr_calls_by_hand():
    pips = pd.DataFrame([[0.99, 0.2], [0.9, 0.6]], index=pd.Index(["a", "b"], name="perturbation"),
                        columns=pd.RangeIndex(2, name="latent"))
    calls = call_targets(pips, fdr=0.1)
    # sorted PIPs 0.99, 0.9, 0.6, 0.2: expected FDP 0.01, 0.055, 0.17, ...
    assert list(zip(calls["perturbation"], calls["latent"])) == [("a", 0), ("b", 0)]
    assert calls.attrs["threshold"] == 0.9 and calls.attrs["expected_fdp"] == pytest.approx(0.055)
    assert len(call_targets(pips, fdr=0.0)) == 0
    with pytest.raises(ValueError, match="fdr must lie in"):
        call_targets(pips, fdr=1.5)


def test_fdr_calls_never_take_an_entry_the_model_says_is_off():
    # three sure targets leave budget for a PIP-0 entry at fdr 0.3 (mean 1 - PIP 0.25): the plain
    # rule (min_pip=0) calls it, the default keeps to PIP > 0.5
    pips = pd.DataFrame([[1.0, 1.0], [1.0, 0.0]], index=pd.Index(["a", "b"], name="perturbation"),
                        columns=pd.RangeIndex(2, name="latent"))
    assert len(call_targets(pips, fdr=0.3, min_pip=0.0)) == 4
    calls = call_targets(pips, fdr=0.3)
    assert ("b", 1) not in set(zip(calls["perturbation"], calls["latent"])) and len(calls) == 3
    assert calls.attrs["threshold"] == 1.0 and calls.attrs["expected_fdp"] == 0.0
    pips.iloc[1, 1] = 0.7  # above min_pip: the budget decides again
    assert len(call_targets(pips, fdr=0.3)) == 4 and len(call_targets(pips, fdr=0.05)) == 3
    with pytest.raises(ValueError, match="min_pip must lie in"):
        call_targets(pips, fdr=0.1, min_pip=1.0)


def test_target_calls_are_monotone_in_fdr(fitted):
    model, _ = fitted
    pyro.set_rng_seed(0)
    pips = model.intervention_targets()
    previous = set()
    for fdr in (0.0, 0.01, 0.05, 0.2, 0.5, 0.9):
        calls = call_targets(pips, fdr)
        called = set(zip(calls["perturbation"], calls["latent"]))
        assert previous <= called
        assert (1 - calls["pip"]).mean() <= fdr + 1e-12 if len(calls) else True
        previous = called
    assert isinstance(model.target_calls(0.05), pd.DataFrame)
