"""Evaluation against baselines: each metric on a hand-computed example, each baseline on a
constructed example, ``evaluate`` end to end on a tiny fit, bad input, and a cross-check against
the ``cell-eval`` package (skipped where it is not installed)."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import stats

import pyro_svae
from pyro_svae import baselines, evaluation

from .conftest import FAST, make_screen


# ---- metrics -------------------------------------------------------------------------------
def test_pearson_delta_by_hand():
    predicted, observed = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])
    # centred: x = [-1, 0, 1], y = [-7/3, -1/3, 8/3]; sum xy = 5, sum x^2 = 2, sum y^2 = 114/9
    assert evaluation.pearson_delta(predicted, observed) == pytest.approx(5 / np.sqrt(2 * 114 / 9))
    assert evaluation.pearson_delta(predicted, observed, genes=[0, 2]) == pytest.approx(1.0)
    assert np.isnan(evaluation.pearson_delta(predicted, observed, genes=[1]))
    assert np.isnan(evaluation.pearson_delta(np.zeros(3), observed))  # the control baseline: undefined
    with pytest.raises(ValueError, match="same shape"):
        evaluation.pearson_delta(predicted, observed[:2])


def test_mse_and_mae_by_hand():
    predicted, observed = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])  # errors -1, 0, 2
    assert evaluation.mse(predicted, observed) == pytest.approx(5 / 3)
    assert evaluation.mae(predicted, observed) == pytest.approx(1.0)


def test_discrimination_score_by_hand():
    observed = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    predicted = np.array([[0.9, 0.1], [0.0, 0.0], [0.0, 3.0]])
    # L1 distances of prediction 0 to the observed rows: 1.0, 0.2, 3.8 -> its own row is second (rank 1)
    # prediction 1 ([0, 0]): 0, 1, 3 -> rank 1; prediction 2: 3, 4, 0 -> rank 0
    np.testing.assert_allclose(evaluation.discrimination_score(predicted, observed), [2 / 3, 2 / 3, 1.0])
    exclude = np.zeros((3, 2), bool)
    exclude[2, 1] = True  # gene 1 left out of prediction 2: distances 0, 1, 0 -> its row ties, after row 0
    np.testing.assert_allclose(evaluation.discrimination_score(predicted, observed, exclude=exclude), [2 / 3, 2 / 3, 2 / 3])
    # one prediction scored against all observed rows: it is of row 2
    np.testing.assert_allclose(evaluation.discrimination_score(predicted[2:], observed, true_index=[2]), [1.0])
    with pytest.raises(ValueError, match="metric"):
        evaluation.discrimination_score(predicted, observed, metric="chebyshev")


def test_overlap_at_n_by_hand():
    predicted, observed = [3, 1, 0, 2], [1, 2, 4]
    assert evaluation.overlap_at_n(predicted, observed) == pytest.approx(1 / 3)  # N = all 3 observed
    assert evaluation.overlap_at_n(predicted, observed, 2) == pytest.approx(1 / 2)  # {3, 1} vs {1, 2}
    assert evaluation.overlap_at_n(predicted, observed, 10) == pytest.approx(1 / 3)  # k = min(10, 3)
    assert np.isnan(evaluation.overlap_at_n(predicted, []))


def test_fold_change_and_de_genes_by_hand():
    lfc = evaluation.log2_fold_change(np.log1p([3.0, 0.0, 0.0]), np.log1p([1.0, 0.0, 2.0]))
    np.testing.assert_allclose(lfc, [np.log2(3.0), 0.0, -np.inf])
    np.testing.assert_array_equal(evaluation.rank_by_fold_change(np.log1p([2.0, 0.5, 8.0]), np.log1p([1.0] * 3)),
                                  [2, 0, 1])  # |log2 FC| = 1, 1, 3: the tie keeps gene order
    rng = np.random.default_rng(0)
    control = np.column_stack([rng.uniform(0, 1, 60), np.zeros(60), rng.uniform(0, 1, 60), rng.uniform(0, 1, 60)])
    perturbed = np.column_stack([rng.uniform(2, 3, 40), np.zeros(40), rng.uniform(0, 1, 40), rng.uniform(1, 2, 40)])
    found = evaluation.de_genes(perturbed, control)
    np.testing.assert_array_equal(found, [0, 3])  # both far up, gene 0 by the larger fold change
    p = stats.mannwhitneyu(perturbed[:, 2], control[:, 2], method="asymptotic").pvalue
    assert p > 0.05 and 2 not in found and 1 not in found  # no change; constant zero (p = 1)


# ---- pseudo-bulk and baselines --------------------------------------------------------------
def test_log_normalise_and_pseudobulk_by_hand():
    counts = np.array([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]])
    logx = baselines.log_normalise(counts, target_sum=4)
    np.testing.assert_allclose(logx, np.log1p([[1.0, 3.0], [0.0, 0.0], [2.0, 2.0]]))
    bulk = baselines.pseudobulk(sp.csr_matrix(counts), ["b", "a", "b"], genes=["g0", "g1"], target_sum=4)
    assert list(bulk.index) == ["a", "b"] and list(bulk.columns) == ["g0", "g1"]
    np.testing.assert_allclose(bulk.loc["b"], (np.log1p([1.0, 3.0]) + np.log1p([2.0, 2.0])) / 2)
    change = baselines.changes(bulk, "a")
    np.testing.assert_allclose(change.loc["b"], bulk.loc["b"] - bulk.loc["a"])
    with pytest.raises(ValueError, match="control='ctrl'"):
        baselines.changes(bulk, "ctrl")


def test_simple_baselines_on_a_constructed_example():
    train = pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], index=["A", "B"], columns=["g0", "g1"])
    np.testing.assert_array_equal(baselines.no_change(["C", "D"], ["g0", "g1"]).to_numpy(), np.zeros((2, 2)))
    mean = baselines.training_mean(train, ["C", "D"])
    assert list(mean.index) == ["C", "D"]
    np.testing.assert_allclose(mean.to_numpy(), [[2.0, 3.0], [2.0, 3.0]])
    seen = pd.DataFrame([[5.0, 6.0]], index=["C"], columns=["g0", "g1"])
    few = baselines.k_cell_mean(seen, ["C", "D"])
    assert list(few.index) == ["C"] and few.loc["C"].tolist() == [5.0, 6.0]
    sums = baselines.additive(train, ["A+B", "A+C", "A"])
    assert list(sums.index) == ["A+B"] and sums.loc["A+B"].tolist() == [4.0, 6.0]


def test_linear_baseline_on_a_constructed_example():
    genes = ["A", "B", "C", "D", "g4", "g5"]
    effect = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0])
    train = pd.DataFrame([effect, effect, effect], index=["A", "B", "C"], columns=genes)
    # every training perturbation has the same change: the unpenalised intercept fits it exactly
    predicted = baselines.linear(train, ["D", "E", "A+D"])
    assert list(predicted.index) == ["D"]  # "E" and "A+D" are not a gene
    np.testing.assert_allclose(predicted.loc["D"], effect, atol=1e-10)
    # the closed form of the docstring: B = Y X (X^T X + T ridge^4 D)^-1
    rng = np.random.default_rng(1)
    train = pd.DataFrame(rng.normal(size=(3, 6)), index=["A", "B", "C"], columns=genes)
    y = train.to_numpy().T
    u, s, _ = np.linalg.svd(y - y.mean(axis=0), full_matrices=False)
    embedding = (u * s)[:, :2]
    x = np.column_stack([np.ones(3), embedding[:3]])
    beta = y @ x @ np.linalg.inv(x.T @ x + 3 * 0.1**4 * np.diag([0.0, 1.0, 1.0]))
    np.testing.assert_allclose(baselines.linear(train, ["D"], n_components=2).loc["D"], beta @ [1, *embedding[3]])
    assert baselines.linear(train.iloc[:1], ["D"]).empty  # fewer than 2 training perturbations named like a gene


def test_split_half_halves_are_disjoint():
    counts = np.arange(1, 1 + 9 * 2, dtype=float).reshape(9, 2)
    labels = np.array(["c"] * 4 + ["p"] * 5)
    predicted, second = baselines.split_half(counts, labels, "c", genes=["g0", "g1"], seed=0)
    assert second.sum() == 2 + 2  # floor(n / 2) of each label; the odd cell of "p" is left out
    assert list(predicted.index) == ["p"]
    # the prediction is the change of 2 of the 3 other cells of "p" against the 2 other controls
    controls, others = np.flatnonzero((labels == "c") & ~second), np.flatnonzero((labels == "p") & ~second)
    candidates = [baselines.changes(baselines.pseudobulk(counts[np.r_[controls, pair]], ["c", "c", "p", "p"],
                                                         ["g0", "g1"]), "c").to_numpy()
                  for pair in ([others[0], others[1]], [others[0], others[2]], [others[1], others[2]])]
    assert any(np.allclose(predicted.to_numpy(), c) for c in candidates)
    with pytest.raises(ValueError, match="control='c'"):
        baselines.split_half(counts[3:], labels[3:], "c")


# ---- evaluate end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def screen_split():
    """A tiny screen with pairs; genes renamed so that p0..p4 are genes (the linear baseline
    applies). p4 is unseen: 5 of its cells for transfer, the rest held out; one pair is held out."""
    adata = make_screen(n_perturbations=5, n_combinations=3, n_cells_per_perturbation=30, seed=2)
    adata.var_names = [f"p{i}" if i < 5 else name for i, name in enumerate(adata.var_names)]
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    pair = sorted(p for p in set(labels) if "+" in p and "p4" not in p)[0]
    unseen = np.array(["p4" in label for label in labels])
    p4 = np.flatnonzero(labels == "p4")
    seen_cells, rest = p4[:5], np.flatnonzero(unseen)[~np.isin(np.flatnonzero(unseen), p4[:5])]

    def part(index):
        part = adata[np.sort(index)].copy()
        part.obs["perturbation"] = part.obs["perturbation"].cat.remove_unused_categories()
        return part

    train = part(np.flatnonzero(~unseen & (labels != pair)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # three epochs: not converged, on purpose
        model = pyro_svae.fit(train, **FAST)
    return dict(adata=adata, train=train, model=model, pair=part(np.flatnonzero(labels == pair)),
                seen=part(seen_cells), rest=part(rest[labels[rest] == "p4"]))


def test_evaluate_pairs_and_few_shot(screen_split):
    s = screen_split
    table = evaluation.evaluate(s["model"], s["pair"], s["train"], n_cells=50, n_samples=5)
    assert list(table.columns) == ["perturbation", "method", "metric", "value"]
    assert set(table["method"]) == {"model", "control", "training_mean", "additive", "split_half"}
    model_metrics = set(table.loc[table["method"] == "model", "metric"])
    assert model_metrics == set(evaluation.METRICS)
    assert not table.duplicated(["perturbation", "method", "metric"]).any()
    score = table.set_index(["method", "metric"])["value"]
    assert 0 < score["model", "discrimination_score"] <= 1 and np.isfinite(score["model", "iwelbo"])
    assert np.isnan(score["control", "pearson_delta"]) and score["control", "mse"] > 0

    transferred = s["model"].transfer(s["seen"], max_epochs=3)
    few = evaluation.evaluate(transferred, s["rest"], s["train"], seen=s["seen"], n_cells=50,
                              metrics=["pearson_delta", "mae", "overlap_at_N"], top_n=10)
    assert set(few["method"]) == {"model", "control", "training_mean", "k_cell_mean", "linear", "split_half"}
    assert set(few["metric"]) == {"pearson_delta", "mae", "overlap_at_N"}
    overlap = few.loc[few["metric"] == "overlap_at_N", "value"].dropna()
    assert ((overlap >= 0) & (overlap <= 1)).all()
    # baselines only: no model rows
    alone = evaluation.evaluate(None, s["rest"], s["train"], seen=s["seen"], metrics=["mse"])
    assert "model" not in set(alone["method"]) and "k_cell_mean" in set(alone["method"])


def test_evaluate_leaves_the_users_anndata_unmodified(screen_split):
    s = screen_split
    transferred = s["model"].transfer(s["seen"], max_epochs=2)
    before = {name: (s[name].X.copy(), s[name].obs.copy(), s[name].var.copy(), sorted(s[name].uns), s[name].shape)
              for name in ("rest", "train", "seen")}
    evaluation.evaluate(transferred, s["rest"], s["train"], seen=s["seen"], n_cells=20, n_samples=2,
                        metrics=["mse", "iwelbo"])
    for name, (x, obs, var, uns, shape) in before.items():
        np.testing.assert_array_equal(s[name].X, x)
        pd.testing.assert_frame_equal(s[name].obs, obs)
        pd.testing.assert_frame_equal(s[name].var, var)
        assert sorted(s[name].uns) == uns and s[name].shape == shape


def test_evaluate_bad_input_names_the_key(screen_split):
    s = screen_split
    model, train = s["model"], s["train"]
    with pytest.raises(ValueError, match="'p4'.*does not know"):
        evaluation.evaluate(model, s["rest"], train)  # p4 unseen: transfer first
    missing = s["pair"].copy()
    del missing.obs["perturbation"]
    with pytest.raises(KeyError, match="'perturbation' in adata_test.obs"):
        evaluation.evaluate(model, missing, train)
    no_controls = train[train.obs["perturbation"] != "control"].copy()
    with pytest.raises(ValueError, match="control cells.*adata_train"):
        evaluation.evaluate(model, s["pair"], no_controls)
    with pytest.raises(ValueError, match="metrics.*'r2'"):
        evaluation.evaluate(model, s["pair"], train, metrics=["r2"])
    with pytest.raises(KeyError, match="genes.*missing"):
        evaluation.evaluate(model, s["pair"][:, 1:].copy(), train)


# ---- cross-check against the real cell-eval -------------------------------------------------
def test_metrics_agree_with_cell_eval(tmp_path):
    cell_eval = pytest.importorskip("cell_eval")
    import anndata as ad

    adata = make_screen(n_perturbations=6, n_genes=40, n_cells_per_perturbation=80, n_control=150, seed=3)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    real = np.zeros(len(labels), bool)  # half of each label's cells the observation, half the "prediction"
    for label in np.unique(labels):
        cells = rng.permutation(np.flatnonzero(labels == label))
        real[cells[:len(cells) // 2]] = True
    logx = baselines.log_normalise(adata.X)
    genes = list(adata.var_names)

    def lognorm(mask):
        return ad.AnnData(X=logx[mask].astype(np.float32), obs=pd.DataFrame({"perturbation": labels[mask]}),
                          var=pd.DataFrame(index=genes))

    evaluator = cell_eval.MetricsEvaluator(adata_pred=lognorm(~real), adata_real=lognorm(real), control_pert="control",
                                           pert_col="perturbation", num_threads=1, outdir=str(tmp_path))
    theirs, _ = evaluator.compute(profile="full", skip_metrics=["clustering_agreement", "pearson_edistance"],
                                  write_csv=False)
    theirs = theirs.to_pandas().set_index("perturbation")
    obs = evaluation._observe(adata.X[real], labels[real], "control", genes, baselines.TARGET_SUM, evaluation.FDR)
    pred = evaluation._observe(adata.X[~real], labels[~real], "control", genes, baselines.TARGET_SUM, evaluation.FDR)
    perts = list(obs.changes.index)
    q, o = pred.changes.loc[perts].to_numpy(), obs.changes.loc[perts].to_numpy()
    discrimination = evaluation.discrimination_score(q, o)
    for i, p in enumerate(perts):
        assert evaluation.pearson_delta(q[i], o[i]) == pytest.approx(theirs.loc[p, "pearson_delta"], abs=1e-6)
        assert evaluation.mse(q[i], o[i]) == pytest.approx(theirs.loc[p, "mse_delta"], abs=1e-6)
        assert evaluation.mae(q[i], o[i]) == pytest.approx(theirs.loc[p, "mae_delta"], abs=1e-6)
        assert discrimination[i] == pytest.approx(theirs.loc[p, "discrimination_score_l1"])
        assert len(obs.de[p]) == theirs.loc[p, "de_nsig_counts_real"]
        assert evaluation.overlap_at_n(pred.de[p], obs.de[p]) == pytest.approx(theirs.loc[p, "overlap_at_N"])
        assert evaluation.overlap_at_n(pred.de[p], obs.de[p], 50) == pytest.approx(theirs.loc[p, "overlap_at_50"])
